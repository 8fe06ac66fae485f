//! The device query language: text from operators and API clients. Whatever parses must write
//! itself out canonically and parse back to the same tree; whatever fails must point inside
//! the text. Globs found in the query are run against the input itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tender_core::query::{Expr, parse};

fn globs<'a>(e: &'a Expr, out: &mut Vec<&'a tender_core::query::GlobPattern>) {
    match e {
        Expr::And(items) | Expr::Or(items) => items.iter().for_each(|e| globs(e, out)),
        Expr::Not(inner) => globs(inner, out),
        Expr::Glob { pattern, .. } => out.push(pattern),
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse(text) {
        Ok(query) => {
            let canonical = query.to_string();
            let again = parse(&canonical).expect("the canonical text parses");
            assert_eq!(again, query, "{text:?} -> {canonical:?}");
            assert_eq!(again.to_string(), canonical);
            let _ = query.groups();
            let _ = query.uses_now();
            let mut found = Vec::new();
            globs(query.expr(), &mut found);
            for pattern in found {
                let _ = pattern.matches(text);
                let _ = pattern.to_like();
                let _ = pattern.to_sqlite_glob();
            }
        }
        Err(e) => {
            assert!(e.position <= text.len() && text.is_char_boundary(e.position));
            assert!(!e.message.contains('\n'));
            assert_eq!(e.render(text).lines().count(), 2);
        }
    }
});
