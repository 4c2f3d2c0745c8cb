//! List's page semantics (S3 ListObjects, version 1), as pure code.
//!
//! Keys come back in byte order. Only keys beginning with `prefix` are listed; `marker` is
//! exclusive and need not exist. With a non-empty `delimiter`, a key whose remainder after
//! `prefix` contains the delimiter is rolled up into the common prefix ending at the
//! delimiter's first occurrence: the prefix is listed once in `prefixes`, the key is not
//! in `items`. Items and prefixes together count towards `max_keys` (0 means the default
//! page of 1000; values above [`LIST_PAGE_MAX`] are clamped). A common prefix sorts at
//! its own position, so it is listed only if it is greater than `marker`: a client that
//! passes back the last prefix it saw as the next marker continues after that prefix.
//! `truncated` is true exactly when at least one more entry follows the page.

use crate::config::{LIST_PAGE_DEFAULT, LIST_PAGE_MAX};
use serde::{Deserialize, Serialize};

/// A List request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListQuery {
    /// Only keys with this prefix.
    pub prefix: String,
    /// Only keys (and prefixes) after this one.
    pub marker: String,
    /// Roll keys up into common prefixes at this delimiter (empty: no roll-up).
    pub delimiter: String,
    /// Largest page; 0 means 1000.
    pub max_keys: u64,
}

impl ListQuery {
    /// The page size this query asks for.
    pub fn page_size(&self) -> usize {
        match self.max_keys {
            0 => LIST_PAGE_DEFAULT,
            n => usize::try_from(n).unwrap_or(usize::MAX).min(LIST_PAGE_MAX),
        }
    }

    /// Where listing starts: `(key, exclusive)`.
    pub fn start(&self) -> (String, bool) {
        if self.marker >= self.prefix { (self.marker.clone(), true) } else { (self.prefix.clone(), false) }
    }
}

/// A List answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListPage {
    /// Keys, in order.
    pub items: Vec<String>,
    /// Common prefixes, in order.
    pub prefixes: Vec<String>,
    /// Whether more entries follow.
    pub truncated: bool,
}

/// Builds a page from the visible keys offered in increasing order.
#[derive(Clone, Debug)]
pub struct PageBuilder {
    query: ListQuery,
    limit: usize,
    page: ListPage,
    last_prefix: Option<String>,
}

impl PageBuilder {
    /// An empty page for `query`.
    pub fn new(query: ListQuery) -> Self {
        let limit = query.page_size();
        PageBuilder { query, limit, page: ListPage::default(), last_prefix: None }
    }

    /// Offers the next live key. Returns false once the page is full *and* another entry
    /// was found (the page is then truncated and complete).
    pub fn offer(&mut self, key: &str) -> bool {
        let q = &self.query;
        if !key.starts_with(q.prefix.as_str()) || key <= q.marker.as_str() {
            return true;
        }
        let rolled = (!q.delimiter.is_empty())
            .then(|| key[q.prefix.len()..].find(q.delimiter.as_str()))
            .flatten()
            .map(|i| key[..q.prefix.len() + i + q.delimiter.len()].to_string());
        if let Some(cp) = &rolled
            && (self.last_prefix.as_ref() == Some(cp) || cp.as_str() <= q.marker.as_str())
        {
            return true;
        }
        if self.page.items.len() + self.page.prefixes.len() >= self.limit {
            self.page.truncated = true;
            return false;
        }
        match rolled {
            Some(cp) => {
                self.page.prefixes.push(cp.clone());
                self.last_prefix = Some(cp);
            }
            None => self.page.items.push(key.to_string()),
        }
        true
    }

    /// The query's prefix.
    pub fn prefix(&self) -> &str {
        &self.query.prefix
    }

    /// Entries still wanted before the page is full.
    pub fn remaining(&self) -> usize {
        self.limit.saturating_sub(self.page.items.len() + self.page.prefixes.len())
    }

    /// The page.
    pub fn finish(self) -> ListPage {
        self.page
    }
}

/// Lists `keys` (all live keys, any order) in one go: the reference the distributed List
/// is tested against.
pub fn list_reference<'a>(keys: impl IntoIterator<Item = &'a str>, query: &ListQuery) -> ListPage {
    let mut sorted: Vec<&str> = keys.into_iter().collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut b = PageBuilder::new(query.clone());
    for k in sorted {
        if !b.offer(k) {
            break;
        }
    }
    b.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(prefix: &str, marker: &str, delimiter: &str, max_keys: u64) -> ListQuery {
        ListQuery { prefix: prefix.into(), marker: marker.into(), delimiter: delimiter.into(), max_keys }
    }

    const KEYS: [&str; 8] = ["a", "a/1", "a/2", "b", "b/x/1", "b/y", "c", "photos/2024/x.jpg"];

    #[test]
    fn s3_semantics_table() {
        // (query, items, prefixes, truncated)
        let table: Vec<(ListQuery, Vec<&str>, Vec<&str>, bool)> = vec![
            (q("", "", "", 0), KEYS.to_vec(), vec![], false),
            (q("", "", "", 3), vec!["a", "a/1", "a/2"], vec![], true),
            (q("", "", "", 8), KEYS.to_vec(), vec![], false),
            (q("a/", "", "", 0), vec!["a/1", "a/2"], vec![], false),
            (q("", "a/1", "", 2), vec!["a/2", "b"], vec![], true),
            (q("", "a/15", "", 1), vec!["a/2"], vec![], true), // marker need not exist
            (q("", "", "/", 0), vec!["a", "b", "c"], vec!["a/", "b/", "photos/"], false),
            (q("b/", "", "/", 0), vec!["b/y"], vec!["b/x/"], false),
            (q("", "", "/", 2), vec!["a"], vec!["a/"], true),
            (q("", "a/", "/", 2), vec!["b"], vec!["b/"], true), // a prefix as marker continues after it
            (q("photos/", "", "/", 0), vec![], vec!["photos/2024/"], false),
            (q("zzz", "", "", 0), vec![], vec![], false),
            (q("", "zzz", "", 0), vec![], vec![], false),
        ];
        for (i, (query, items, prefixes, truncated)) in table.into_iter().enumerate() {
            let page = list_reference(KEYS, &query);
            assert_eq!(page.items, items, "row {i}: items");
            assert_eq!(page.prefixes, prefixes, "row {i}: prefixes");
            assert_eq!(page.truncated, truncated, "row {i}: truncated");
        }
    }

    #[test]
    fn paging_with_markers_visits_every_entry_once() {
        for delimiter in ["", "/"] {
            let all = list_reference(KEYS, &q("", "", delimiter, 0));
            let mut seen = ListPage::default();
            let mut marker = String::new();
            loop {
                let page = list_reference(KEYS, &q("", &marker, delimiter, 2));
                let last = page.items.iter().chain(&page.prefixes).max().cloned();
                seen.items.extend(page.items);
                seen.prefixes.extend(page.prefixes);
                if !page.truncated {
                    break;
                }
                marker = last.expect("a truncated page is not empty");
            }
            assert_eq!((seen.items, seen.prefixes), (all.items, all.prefixes), "delimiter {delimiter:?}");
        }
    }

    #[test]
    fn max_keys_is_clamped() {
        assert_eq!(q("", "", "", 0).page_size(), LIST_PAGE_DEFAULT);
        assert_eq!(q("", "", "", u64::MAX).page_size(), LIST_PAGE_MAX);
    }
}
