//! A growable Fenwick tree: prefix sums in O(log n), append in O(log n).
//! Indexed by membership epoch, it counts current members by the epoch their
//! membership began, so "members at send time still present" is one prefix sum.

#[derive(Debug, Clone, Default)]
pub(crate) struct Fenwick {
    /// 1-based; `tree[0]` is unused.
    tree: Vec<i64>,
}

impl Fenwick {
    pub(crate) fn new() -> Self {
        Fenwick { tree: vec![0] }
    }

    /// Number of slots (indexes `0..len`).
    pub(crate) fn len(&self) -> usize {
        self.tree.len() - 1
    }

    /// Appends a slot holding `value`.
    pub(crate) fn push(&mut self, value: i64) {
        let n = self.tree.len(); // 1-based index of the new slot
        let low = n & n.wrapping_neg();
        // tree[n] covers slots (n - low, n]; all but the new one exist already.
        let covered = self.prefix_1based(n - 1) - self.prefix_1based(n - low);
        self.tree.push(value + covered);
    }

    /// Adds `delta` to slot `index` (0-based).
    pub(crate) fn add(&mut self, index: usize, delta: i64) {
        let mut i = index + 1;
        while i < self.tree.len() {
            self.tree[i] += delta;
            i += i & i.wrapping_neg();
        }
    }

    /// Sum of slots `0..=index` (0-based), clamped to the slots that exist.
    pub(crate) fn prefix(&self, index: usize) -> i64 {
        self.prefix_1based((index + 1).min(self.len()))
    }

    fn prefix_1based(&self, mut i: usize) -> i64 {
        let mut sum = 0;
        while i > 0 {
            sum += self.tree[i];
            i -= i & i.wrapping_neg();
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::Fenwick;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn matches_a_plain_vector(ops in proptest::collection::vec((0u8..3, 0usize..64, -5i64..5), 1..200)) {
            let mut f = Fenwick::new();
            let mut v: Vec<i64> = Vec::new();
            for (op, i, x) in ops {
                match op {
                    0 => { f.push(x); v.push(x); }
                    1 if !v.is_empty() => { let i = i % v.len(); f.add(i, x); v[i] += x; }
                    _ if !v.is_empty() => {
                        let i = i % v.len();
                        prop_assert_eq!(f.prefix(i), v[..=i].iter().sum::<i64>());
                    }
                    _ => {}
                }
            }
        }
    }
}
