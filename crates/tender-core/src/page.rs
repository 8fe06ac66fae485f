//! Cursor pagination. A listing never silently caps its results: a page says whether more
//! follow (`next`), and a limit outside the allowed range is an error, not a quiet clamp.

use serde::Serialize;

/// Items per page when the caller does not say.
pub const DEFAULT_PAGE_LIMIT: u32 = 100;
/// Most items one page may hold.
pub const MAX_PAGE_LIMIT: u32 = 1000;

/// A validated page size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLimit(u32);

impl PageLimit {
    pub fn new(n: u32) -> Result<Self, InvalidLimit> {
        if (1..=MAX_PAGE_LIMIT).contains(&n) {
            Ok(PageLimit(n))
        } else {
            Err(InvalidLimit(n))
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }

    /// The largest page, [`MAX_PAGE_LIMIT`].
    pub fn max() -> Self {
        PageLimit(MAX_PAGE_LIMIT)
    }
}

impl Default for PageLimit {
    fn default() -> Self {
        PageLimit(DEFAULT_PAGE_LIMIT)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("limit must be between 1 and {MAX_PAGE_LIMIT}, got {0}; follow next_cursor for more")]
pub struct InvalidLimit(pub u32);

/// What to fetch: up to `limit` items strictly after the key `after` in the listing's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest<K> {
    pub after: Option<K>,
    pub limit: PageLimit,
}

impl<K> PageRequest<K> {
    pub fn first(limit: PageLimit) -> Self {
        PageRequest { after: None, limit }
    }
}

/// One page of a listing. `next` is the key to pass as `after` for the following page; it is
/// `None` only when no item follows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Page<T, K> {
    pub items: Vec<T>,
    pub next: Option<K>,
}

impl<T, K> Page<T, K> {
    /// Builds a page from up to `limit + 1` rows fetched in order: the extra row, if present,
    /// proves that more follow and is dropped; `key` gives the cursor of the last kept item.
    pub fn from_overfetch(mut rows: Vec<T>, limit: PageLimit, key: impl Fn(&T) -> K) -> Self {
        let limit = limit.get() as usize;
        let more = rows.len() > limit;
        rows.truncate(limit);
        let next = if more { rows.last().map(key) } else { None };
        Page { items: rows, next }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits() {
        assert!(PageLimit::new(0).is_err());
        assert!(PageLimit::new(1).is_ok());
        assert!(PageLimit::new(MAX_PAGE_LIMIT).is_ok());
        assert_eq!(
            PageLimit::new(MAX_PAGE_LIMIT + 1),
            Err(InvalidLimit(MAX_PAGE_LIMIT + 1))
        );
    }

    #[test]
    fn overfetch_sets_next_only_when_more_follow() {
        let l = PageLimit::new(2).unwrap();
        let p = Page::from_overfetch(vec![1, 2, 3], l, |x| *x);
        assert_eq!(p.items, vec![1, 2]);
        assert_eq!(p.next, Some(2));
        let p = Page::from_overfetch(vec![1, 2], l, |x| *x);
        assert_eq!(p.next, None);
        let p: Page<i32, i32> = Page::from_overfetch(vec![], l, |x| *x);
        assert!(p.items.is_empty() && p.next.is_none());
    }
}
