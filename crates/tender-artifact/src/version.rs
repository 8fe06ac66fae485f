//! Version ordering, so that a device can refuse an artifact older than what it runs.
//!
//! The order is Debian's (`dpkg --compare-versions` without epochs or revisions): runs of
//! digits compare as numbers, other runs compare character by character with letters before
//! other characters and `~` before everything, even the end of the string. So
//! `1.9 < 1.10`, `1.0~rc1 < 1.0 < 1.0a < 1.0+fix`.

use std::cmp::Ordering;

fn at(s: &[u8], i: usize) -> u8 {
    s.get(i).copied().unwrap_or(0)
}

fn order(c: u8) -> i32 {
    match c {
        0 => 0,
        b'~' => -1,
        c if c.is_ascii_digit() => 0,
        c if c.is_ascii_alphabetic() => i32::from(c),
        c => i32::from(c) + 256,
    }
}

/// Compares two version strings (see the module documentation for the order).
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        while (i < a.len() && !a[i].is_ascii_digit()) || (j < b.len() && !b[j].is_ascii_digit()) {
            let (ac, bc) = (order(at(a, i)), order(at(b, j)));
            if ac != bc {
                return ac.cmp(&bc);
            }
            i += 1;
            j += 1;
        }
        while at(a, i) == b'0' {
            i += 1;
        }
        while at(b, j) == b'0' {
            j += 1;
        }
        let mut first_diff = Ordering::Equal;
        while at(a, i).is_ascii_digit() && at(b, j).is_ascii_digit() {
            if first_diff == Ordering::Equal {
                first_diff = at(a, i).cmp(&at(b, j));
            }
            i += 1;
            j += 1;
        }
        if at(a, i).is_ascii_digit() {
            return Ordering::Greater;
        }
        if at(b, j).is_ascii_digit() {
            return Ordering::Less;
        }
        if first_diff != Ordering::Equal {
            return first_diff;
        }
    }
    Ordering::Equal
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_like_dpkg() {
        let ascending = [
            "0.9", "1.0~rc1", "1.0~rc2", "1.0", "1.0a", "1.0+fix", "1.1", "1.9", "1.10", "2",
            "2.0.1", "10",
        ];
        for (x, a) in ascending.iter().enumerate() {
            for (y, b) in ascending.iter().enumerate() {
                assert_eq!(compare_versions(a, b), x.cmp(&y), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn leading_zeros_and_equal_strings() {
        assert_eq!(compare_versions("1.01", "1.1"), Ordering::Equal);
        assert_eq!(compare_versions("", ""), Ordering::Equal);
        assert_eq!(compare_versions("", "1"), Ordering::Less);
        assert_eq!(compare_versions("1.0", "1.0.0"), Ordering::Less);
        assert_eq!(compare_versions("1.0~", "1.0"), Ordering::Less);
    }
}
