//! Cutting what the server sends into messages far below gRPC's 4 MiB limit, whatever the
//! entries hold.
//!
//! Entries within today's validation limits can be ~100 KB each (64 selectors of 1 KiB, 64 DNS
//! names, long IDs), so a count alone (500 a page) does not bound a message: 500 such entries
//! are tens of MB, the encoder refuses them, and an agent that cannot sync reconnects forever.
//! A page is therefore cut at whichever comes first: [`PAGE_ENTRIES`] entries or [`PAGE_BYTES`]
//! of encoded entries. One entry alone always fits (validation keeps it far below the limit),
//! so every page makes progress.

use prost::Message;

/// Most entries in one page: a snapshot page, one message of a pushed change, an admin list
/// page.
pub(crate) const PAGE_ENTRIES: usize = 500;

/// Most encoded bytes of entries in one page: a quarter of the 4 MiB message limit, leaving
/// room for the largest entry validation allows and the message's own fields.
pub(crate) const PAGE_BYTES: usize = 1024 * 1024;

/// Encoded size of `m` as an element of a repeated field: its bytes, the length prefix and the
/// tag.
pub(crate) fn field_len<M: Message>(m: &M) -> usize {
    let n = m.encoded_len();
    n + prost::length_delimiter_len(n) + 1
}

/// Tracks the current page: how many items and bytes it holds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pager {
    max_items: usize,
    max_bytes: usize,
    items: usize,
    bytes: usize,
}

impl Default for Pager {
    fn default() -> Self {
        Pager::new(PAGE_ENTRIES, PAGE_BYTES)
    }
}

impl Pager {
    /// A pager cutting at `max_items` items or `max_bytes` bytes.
    pub(crate) fn new(max_items: usize, max_bytes: usize) -> Self {
        Pager {
            max_items: max_items.max(1),
            max_bytes,
            items: 0,
            bytes: 0,
        }
    }

    /// Whether an item of `len` bytes still fits in the current page. An empty page takes
    /// any item, so a page never stays empty.
    pub(crate) fn fits(&self, len: usize) -> bool {
        self.items == 0 || (self.items < self.max_items && self.bytes + len <= self.max_bytes)
    }

    /// Counts an item of `len` bytes into the current page.
    pub(crate) fn add(&mut self, len: usize) {
        self.items += 1;
        self.bytes += len;
    }

    /// Starts a new page.
    pub(crate) fn next_page(&mut self) {
        self.items = 0;
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_cut_at_count_or_bytes_and_never_stay_empty() {
        let mut p = Pager::new(3, 100);
        assert!(p.fits(1000), "an empty page takes even an oversized item");
        p.add(1000);
        assert!(!p.fits(1));
        p.next_page();
        for _ in 0..3 {
            assert!(p.fits(10));
            p.add(10);
        }
        assert!(!p.fits(10), "count limit");
        p.next_page();
        p.add(60);
        assert!(p.fits(40));
        assert!(!p.fits(41), "byte limit");
    }
}
