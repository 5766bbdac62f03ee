//! The list wrappers: a numbered page, a window of a sequence, a plain list.

use serde::Serialize;

/// One page of a paginated list: `{hasMore, items, page, pageSize, total}`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    has_more: bool,
    items: Vec<T>,
    page: u64,
    page_size: u64,
    total: u64,
}

impl<T> Page<T> {
    /// The domain's page, each item turned into its wire shape.
    pub fn of<'a, U>(page: &'a crate::paging::Page<U>, item: impl FnMut(&'a U) -> T) -> Self {
        Self {
            has_more: page.has_more,
            items: page.items.iter().map(item).collect(),
            page: page.page,
            page_size: page.page_size,
            total: page.total,
        }
    }
}

/// Records after a sequence number: `{items, nextSeq}`, `nextSeq` being the last one given
/// (or the one asked after, when there are none).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SeqPage<T> {
    items: Vec<T>,
    next_seq: u64,
}

impl<T> SeqPage<T> {
    pub fn new(items: Vec<T>, next_seq: u64) -> Self {
        Self { items, next_seq }
    }
}

/// A whole list: `{items}`.
#[derive(Debug, Serialize)]
pub struct Items<T> {
    items: Vec<T>,
}

impl<T> Items<T> {
    pub fn new(items: Vec<T>) -> Self {
        Self { items }
    }
}

#[cfg(test)]
mod tests {
    use super::super::check::sorted_keys;
    use super::*;

    #[test]
    fn keys_in_wire_order() {
        let page = crate::paging::PageRequest {
            page: 2,
            page_size: 2,
        }
        .slice(vec![1, 2, 3, 4, 5]);
        let page = Page::of(&page, |n| n * 10);
        sorted_keys(&page);
        assert_eq!(
            serde_json::to_string(&page).unwrap(),
            r#"{"hasMore":true,"items":[30,40],"page":2,"pageSize":2,"total":5}"#
        );
        sorted_keys(&SeqPage::new(vec!["a"], 7));
        sorted_keys(&Items::new(vec![1]));
    }
}
