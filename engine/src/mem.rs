//! What the engine's caches take from the allocator, for their byte bounds.
//!
//! A cache bounded in bytes must count what its entries cost, not what they hold: every
//! buffer is rounded up to the allocator's size class, a vector holds its capacity, not
//! its length, and a B-tree map's entries live in nodes that are partly empty. Counting
//! lengths and a map slot of the entry's size, the register cache took 1.3–1.6× its
//! setting (docs/PERFORMANCE.md, "Which cache overshoots").
//!
//! The size classes are mimalloc's (the allocator `memo` is built with): 8 bytes apart up
//! to 64 bytes, then four per power of two (80, 96, 112, 128, 160, …). glibc's classes
//! are 16 bytes apart, so this is close there too.

/// Bytes the allocator hands out for a request of `n` bytes (0 for no allocation).
pub const fn allocation_bytes(n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    let words = n.div_ceil(8);
    if words <= 8 {
        return words * 8;
    }
    // Four classes per power of two: the step is a quarter of the power below `words`.
    let high_bit = usize::BITS - 1 - (words - 1).leading_zeros();
    let step = 1usize << (high_bit - 2);
    words.next_multiple_of(step) * 8
}

/// Bytes of a vector's buffer: its capacity, rounded to a size class.
pub fn vec_bytes<T>(v: &Vec<T>) -> usize {
    allocation_bytes(v.capacity() * std::mem::size_of::<T>())
}

/// Entries in a full node of the standard library's B-tree map (`2B - 1`, `B = 6`).
const BTREE_CAPACITY: usize = 11;

/// Average bytes per entry of a `BTreeMap<K, V>`: a leaf holds up to 11 keys and values
/// inline and is about two thirds full (nodes split when full and merge below half); the
/// internal nodes, one for every seven leaves or so, add a seventh.
pub const fn btree_entry_bytes<K, V>() -> usize {
    let leaf = allocation_bytes(
        BTREE_CAPACITY * (std::mem::size_of::<K>() + std::mem::size_of::<V>()) + 2 * std::mem::size_of::<usize>(),
    );
    // Per entry: leaf / (11 · 2/3), plus a seventh for the internal nodes.
    leaf * 3 * 8 / (2 * BTREE_CAPACITY * 7)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_up_to_the_allocator_size_classes() {
        let classes: Vec<usize> = [1, 8, 9, 64, 65, 80, 81, 100, 112, 113, 128, 129, 160, 161, 256, 257, 3000]
            .into_iter()
            .map(allocation_bytes)
            .collect();
        assert_eq!(classes, [8, 8, 16, 64, 80, 80, 96, 112, 112, 128, 128, 160, 160, 192, 256, 320, 3072]);
        assert_eq!(allocation_bytes(0), 0);
        for n in 1..100_000 {
            let a = allocation_bytes(n);
            assert!(a >= n && a <= n + n / 4 + 8, "{n} → {a}: at most a quarter more");
        }
    }

    #[test]
    fn a_vector_counts_its_capacity() {
        let mut v: Vec<u64> = Vec::with_capacity(10);
        v.push(1);
        assert_eq!(vec_bytes(&v), 80);
        assert_eq!(vec_bytes(&Vec::<u64>::new()), 0);
    }

    #[test]
    fn a_map_entry_counts_more_than_its_slot() {
        let slot = std::mem::size_of::<(Vec<u8>, [u8; 200])>();
        let entry = btree_entry_bytes::<Vec<u8>, [u8; 200]>();
        assert!(entry > slot * 3 / 2 && entry < slot * 2, "{entry} for a slot of {slot}");
    }
}
