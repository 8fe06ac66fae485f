//! Opaque page cursors: base64url of a versioned prefix and the last key of the previous page.

use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use tender_core::page::{PageLimit, PageRequest};

use crate::problem::Problem;

/// The page a listing's `limit` and `cursor` query parameters ask for: a limit outside the
/// allowed range is `400 invalid-limit` (never a silent clamp), a foreign cursor `400
/// invalid-cursor`.
pub fn page_request<K: FromStr>(
    version: &str,
    limit: Option<u32>,
    cursor: Option<&str>,
) -> Result<PageRequest<K>, Problem> {
    let limit = match limit {
        None => PageLimit::default(),
        Some(n) => {
            PageLimit::new(n).map_err(|e| Problem::bad_request("invalid-limit", e.to_string()))?
        }
    };
    let after = cursor.map(|c| decode::<K>(version, c)).transpose()?;
    Ok(PageRequest { after, limit })
}

pub fn encode(version: &str, after: impl std::fmt::Display) -> String {
    URL_SAFE_NO_PAD.encode(format!("{version}{after}"))
}

pub fn decode<K: FromStr>(version: &str, c: &str) -> Result<K, Problem> {
    let bad = || {
        Problem::bad_request(
            "invalid-cursor",
            "cursor is not one this server issued; pass next_cursor from a previous page unchanged",
        )
    };
    let raw = URL_SAFE_NO_PAD.decode(c).map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    text.strip_prefix(version)
        .and_then(|k| k.parse().ok())
        .ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tender_core::DeviceId;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let id: DeviceId = "0192f1c4-7b5e-7a1e-9c1d-2f8e4b6a0c3d".parse().unwrap();
        assert_eq!(decode::<DeviceId>("d1:", &encode("d1:", id)).unwrap(), id);
        for bad in [
            "",
            "!!",
            "Zm9v",
            &URL_SAFE_NO_PAD.encode("d2:x"),
            &encode("t1:", id),
        ] {
            assert!(decode::<DeviceId>("d1:", bad).is_err(), "{bad}");
        }
    }
}
