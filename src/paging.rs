//! Pagination as docs/api.md defines it: `page` ≥ 1, `pageSize` 1..100.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    pub page: u64,
    pub page_size: u64,
}

impl Default for PageRequest {
    fn default() -> Self {
        Self {
            page: 1,
            page_size: 20,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub total: u64,
    pub page: u64,
    pub page_size: u64,
    pub has_more: bool,
}

impl PageRequest {
    pub const MAX_PAGE_SIZE: u64 = 100;

    fn offset(&self) -> u64 {
        (self.page.saturating_sub(1)).saturating_mul(self.page_size)
    }

    /// Takes this page out of everything that matched.
    pub fn slice<T>(&self, all: Vec<T>) -> Page<T> {
        let total = all.len() as u64;
        let offset = self.offset();
        let items: Vec<T> = all
            .into_iter()
            .skip(offset.min(total) as usize)
            .take(self.page_size as usize)
            .collect();
        Page {
            has_more: offset.saturating_add(items.len() as u64) < total,
            items,
            total,
            page: self.page,
            page_size: self.page_size,
        }
    }
}

impl<T> Page<T> {
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            items: self.items.into_iter().map(f).collect(),
            total: self.total,
            page: self.page,
            page_size: self.page_size,
            has_more: self.has_more,
        }
    }

    /// `map` with a step that may fail: the first failure is the answer.
    pub fn try_map<U, E>(self, f: impl FnMut(T) -> Result<U, E>) -> Result<Page<U>, E> {
        Ok(Page {
            items: self.items.into_iter().map(f).collect::<Result<_, _>>()?,
            total: self.total,
            page: self.page,
            page_size: self.page_size,
            has_more: self.has_more,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_and_reports_more() {
        let p = PageRequest {
            page: 2,
            page_size: 3,
        }
        .slice((1..=7).collect::<Vec<_>>());
        assert_eq!(p.items, vec![4, 5, 6]);
        assert!(p.has_more);
        assert_eq!(p.total, 7);
        let p = PageRequest {
            page: 3,
            page_size: 3,
        }
        .slice((1..=7).collect::<Vec<_>>());
        assert_eq!(p.items, vec![7]);
        assert!(!p.has_more);
        let p = PageRequest {
            page: 9,
            page_size: 3,
        }
        .slice((1..=7).collect::<Vec<_>>());
        assert!(p.items.is_empty());
        assert!(!p.has_more);
    }
}
