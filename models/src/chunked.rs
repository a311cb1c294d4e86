//! A JSON array read in fixed-size chunks.
//!
//! A `Vec` that grows by doubling copies every item it holds at each doubling,
//! into memory the kernel has just faulted in; for the components of a large
//! model (a few hundred bytes each before conversion) that copying was a fifth
//! of reading the model. Chunks are never moved once filled.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserialize, Deserializer, SeqAccess, Visitor};

/// Items per chunk: large enough that the chunk list stays short, small enough
/// that a small model wastes little.
const CHUNK: usize = 256;

#[derive(Debug)]
pub(crate) struct Chunked<T> {
    chunks: Vec<Vec<T>>,
}

impl<T> Default for Chunked<T> {
    fn default() -> Self {
        Chunked { chunks: Vec::new() }
    }
}

impl<T> Chunked<T> {
    pub(crate) fn len(&self) -> usize {
        self.chunks.iter().map(Vec::len).sum()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flatten()
    }

    /// The items in order, into a vector of exactly their number.
    pub(crate) fn into_vec_with<U>(self, mut f: impl FnMut(usize, T) -> U) -> Vec<U> {
        let mut out = Vec::with_capacity(self.len());
        for (i, item) in self.chunks.into_iter().flatten().enumerate() {
            out.push(f(i, item));
        }
        out
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Chunked<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Items<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for Items<T> {
            type Value = Chunked<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Chunked<T>, A::Error> {
                let mut chunks: Vec<Vec<T>> = Vec::new();
                loop {
                    // The first chunk grows as a vector does: most arrays
                    // are short (a subsystem's ten components), and a full
                    // chunk reserved for each of a megamodel's thousand
                    // subsystems was hundreds of megabytes. Only an array
                    // known to be long gets whole chunks at once.
                    let mut chunk = if chunks.is_empty() {
                        Vec::new()
                    } else {
                        Vec::with_capacity(CHUNK)
                    };
                    while chunk.len() < CHUNK {
                        match seq.next_element()? {
                            Some(item) => chunk.push(item),
                            None => {
                                if !chunk.is_empty() {
                                    chunks.push(chunk);
                                }
                                return Ok(Chunked { chunks });
                            }
                        }
                    }
                    chunks.push(chunk);
                }
            }
        }

        deserializer.deserialize_seq(Items(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_keep_their_order_across_chunks() {
        for n in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 7] {
            let text = serde_json::to_string(&(0..n).collect::<Vec<usize>>()).unwrap();
            let read: Chunked<usize> = serde_json::from_str(&text).unwrap();
            assert_eq!(read.len(), n);
            assert!(read.iter().copied().eq(0..n));
            assert_eq!(
                read.into_vec_with(|i, x| (i, x)),
                (0..n).map(|i| (i, i)).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn a_short_array_reserves_little() {
        let read: Chunked<u64> = serde_json::from_str("[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]").unwrap();
        assert_eq!(read.chunks.len(), 1);
        assert!(
            read.chunks[0].capacity() < 32,
            "{}",
            read.chunks[0].capacity()
        );
        let text = serde_json::to_string(&vec![0u8; 3 * CHUNK]).unwrap();
        let long: Chunked<u8> = serde_json::from_str(&text).unwrap();
        assert!(long.chunks.iter().all(|c| c.capacity() <= CHUNK));
    }

    #[test]
    fn a_non_array_is_refused_as_an_array_expected() {
        let e = serde_json::from_str::<Chunked<u8>>("{}").unwrap_err();
        assert!(e.to_string().contains("expected an array"), "{e}");
    }
}
