use std::io::{self, Read};

use rand::{RngExt, rng};
use std::sync::{Arc, Mutex};

use rustic_cdc::{Polynom, Polynom64, Rabin64};

use crate::error::{ErrorKind, RusticError, RusticResult};

pub(super) mod constants {
    /// The size of a kilobyte.
    pub(super) const KB: usize = 1024;
    /// Buffer size used for reading - TODO: Find out optimal size for best performance!
    pub(super) const BUF_SIZE: usize = 64 * KB;
    /// Random polynomial maximum tries.
    pub(super) const RAND_POLY_MAX_TRIES: i32 = 1_000_000;
}

pub(crate) fn check_rabin_params(
    chunk_size: usize,
    chunk_min_size: usize,
    chunk_max_size: usize,
) -> RusticResult<()> {
    if (chunk_size & (chunk_size - 1)) != 0 {
        return Err(RusticError::new(
            ErrorKind::Unsupported,
            "Chunk size must be a power of 2 for the rabin chunker. chunk size = {chunk_size}.",
        )
        .attach_context("chunk_size", chunk_size.to_string()));
    }
    if chunk_min_size > chunk_size {
        return Err(RusticError::new(
            ErrorKind::Unsupported,
            "Chunk min size must be smaller or equal than the chunk size.",
        ));
    }
    if chunk_max_size < chunk_size {
        return Err(RusticError::new(
            ErrorKind::Unsupported,
            "Chunk max size must be larger or equal than the chunk size.",
        ));
    }
    Ok(())
}

/// Tables of the Rabin fingerprint for one polynomial (window of 64 bytes).
///
/// stowage patch: computing them costs about as much as chunking 100 KiB, and they
/// were computed for every file; now once per polynomial.
#[derive(Debug)]
pub(crate) struct RabinTables {
    out_table: [Polynom64; 256],
    mod_table: [Polynom64; 256],
    polynom_shift: u32,
}

/// The window size of restic's chunker, in bytes.
const WINDOW_SIZE: usize = 64;

impl RabinTables {
    /// The tables for `poly`, computed once per process and polynomial.
    ///
    /// # Errors
    ///
    /// A polynomial of degree below 8 (restic's have degree 53): the hash would be
    /// shifted by a negative amount. Upstream's `Rabin64` panics there; chunking with
    /// another shift would cut chunks no restic cuts.
    pub(crate) fn for_polynom(poly: Polynom64) -> RusticResult<Arc<Self>> {
        let Ok(polynom_shift) = u32::try_from(poly.degree() - 8) else {
            return Err(RusticError::new(
                ErrorKind::Unsupported,
                "The chunker polynomial `{poly}` of the repository config has degree below 8: not a polynomial restic chunks with.",
            )
            .attach_context("poly", format!("{poly:#x}")));
        };
        static CACHE: Mutex<Vec<(Polynom64, Arc<RabinTables>)>> = Mutex::new(Vec::new());
        let mut cache = CACHE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, tables)) = cache.iter().find(|(p, _)| *p == poly) {
            return Ok(tables.clone());
        }
        let tables = Arc::new(Self {
            out_table: Rabin64::calculate_out_table(WINDOW_SIZE, &poly),
            mod_table: Rabin64::calculate_mod_table(&poly),
            polynom_shift,
        });
        cache.push((poly, tables.clone()));
        Ok(tables)
    }
}

/// The rolling hash over the last 64 bytes, as `rustic_cdc::Rabin64` computes it.
struct Window<'a> {
    tables: &'a RabinTables,
    data: [u8; WINDOW_SIZE],
    index: usize,
    hash: Polynom64,
}

impl<'a> Window<'a> {
    /// `Rabin64::reset_and_prefill_window` with the 64 bytes `last`: the hash starts
    /// at 0 and takes the first 63 of them; the oldest slot of the window holds 0.
    fn prefilled(tables: &'a RabinTables, last: &[u8]) -> Self {
        let mut w = Self {
            tables,
            data: [0; WINDOW_SIZE],
            index: 0,
            hash: 0,
        };
        for &b in last.iter().take(WINDOW_SIZE - 1) {
            w.data[w.index] = b;
            let mod_index = (w.hash >> w.tables.polynom_shift) & 255;
            w.hash <<= 8;
            w.hash |= Polynom64::from(b);
            w.hash ^= w.tables.mod_table[mod_index as usize];
            w.index = (w.index + 1) & (WINDOW_SIZE - 1);
        }
        w.data[w.index] = 0;
        w
    }

    /// `Rabin64::slide`.
    #[inline(always)]
    fn slide(&mut self, byte: u8) {
        let out_value = self.data[self.index];
        self.hash ^= self.tables.out_table[out_value as usize];
        self.data[self.index] = byte;
        let mod_index = (self.hash >> self.tables.polynom_shift) & 255;
        self.hash <<= 8;
        self.hash |= Polynom64::from(byte);
        self.hash ^= self.tables.mod_table[mod_index as usize];
        self.index = (self.index + 1) & (WINDOW_SIZE - 1);
    }
}

/// `ChunkIter` is an iterator that chunks data.
pub(crate) struct ChunkIter<R: Read + Send> {
    /// Data read from `reader` and not yet part of a chunk: `buf[pos..]`.
    buf: Vec<u8>,

    /// The position in the buffer.
    pos: usize,

    /// The reader.
    reader: R,

    /// The split mask.
    split_mask: u64,

    /// The fingerprint tables.
    tables: Arc<RabinTables>,

    /// The average chunk size (for the first allocation of a chunk).
    chunk_size: usize,

    /// The size hint is used to optimize memory allocation; this should be an upper bound on the size.
    size_hint: usize,

    /// The minimum size.
    min_size: usize,

    /// The maximum size.
    max_size: usize,

    /// If the iterator is finished.
    finished: bool,
}

impl<R: Read + Send> ChunkIter<R> {
    /// Creates a new `ChunkIter`.
    ///
    /// # Arguments
    ///
    /// * `tables` - The fingerprint tables of the repository's polynomial.
    /// * `chunk_size` - The size of the chunk.
    /// * `chunk_min_size` - The minimum size of the chunk.
    /// * `chunk_max_size` - The maximum size of the chunk.
    /// * `reader` - The reader to read from.
    /// * `size_hint` - The size hint is used to optimize memory allocation; this should be an upper bound on the size.
    ///
    /// # Errors
    ///
    /// * If the chunk size is not a power of 2.
    /// * If the chunk min size is larger than the chunk size.
    /// * If the chunk max size is smaller than the chunk size.
    pub(crate) fn new(
        tables: Arc<RabinTables>,
        chunk_size: usize,
        chunk_min_size: usize,
        chunk_max_size: usize,
        reader: R,
        size_hint: usize,
    ) -> RusticResult<Self> {
        check_rabin_params(chunk_size, chunk_min_size, chunk_max_size)?;
        let split_mask: u64 = (chunk_size - 1) as u64;
        Ok(Self {
            buf: Vec::with_capacity(constants::BUF_SIZE),
            pos: 0,
            reader,
            split_mask,
            tables,
            chunk_size,
            size_hint,
            min_size: chunk_min_size,
            max_size: chunk_max_size,
            finished: false,
        })
    }
}

impl<R: Read + Send> Iterator for ChunkIter<R> {
    type Item = RusticResult<Vec<u8>>;

    // stowage patch: the same chunk boundaries as before (restic's), found by
    // scanning the read buffer in place instead of pushing every byte into the chunk
    // one at a time; the chunk is allocated for a typical size up front.
    fn next(&mut self) -> Option<Self::Item> {
        if self.finished {
            return None;
        }

        let capacity = self
            .size_hint
            .min(self.min_size.saturating_add(2 * self.chunk_size))
            .min(self.max_size);
        let mut vec = Vec::with_capacity(capacity);

        // The first `min_size` bytes always belong to the chunk: take what the buffer
        // holds, then read the rest.
        let from_buf = (self.buf.len() - self.pos).min(self.min_size);
        vec.extend_from_slice(&self.buf[self.pos..self.pos + from_buf]);
        self.pos += from_buf;
        let need = self.min_size - from_buf;
        if need > 0 {
            let size = match (&mut self.reader).take(need as u64).read_to_end(&mut vec) {
                Ok(size) => size,
                Err(err) => {
                    return Some(Err(RusticError::with_source(
                        ErrorKind::InputOutput,
                        "Failed to read from reader in iterator",
                        err,
                    )));
                }
            };
            // If min_size is not reached, we are done.
            if size < need {
                self.finished = true;
                return if vec.is_empty() { None } else { Some(Ok(vec)) };
            }
        }

        let mut window = Window::prefilled(
            &self.tables,
            &vec[vec.len().saturating_sub(WINDOW_SIZE)..],
        );

        loop {
            if vec.len() >= self.max_size {
                break;
            }

            if (window.hash & self.split_mask) == 0 {
                break;
            }

            if self.buf.len() == self.pos {
                self.buf.resize(constants::BUF_SIZE, 0);
                match self.reader.read(&mut self.buf[..]) {
                    Ok(0) => {
                        self.buf.clear();
                        self.pos = 0;
                        self.finished = true;
                        break;
                    }
                    Ok(size) => {
                        self.pos = 0;
                        self.buf.truncate(size);
                    }

                    Err(ref e) if e.kind() == io::ErrorKind::Interrupted => {
                        self.buf.clear();
                        self.pos = 0;
                        continue;
                    }
                    Err(err) => {
                        return Some(Err(RusticError::with_source(
                            ErrorKind::InputOutput,
                            "Failed to read from reader in iterator",
                            err,
                        )));
                    }
                }
            }

            // Slide over the buffered bytes until a boundary or the maximum size.
            let avail = &self.buf[self.pos..];
            let limit = avail.len().min(self.max_size - vec.len());
            let mut n = 0;
            while n < limit {
                window.slide(avail[n]);
                n += 1;
                if (window.hash & self.split_mask) == 0 {
                    break;
                }
            }
            vec.extend_from_slice(&avail[..n]);
            self.pos += n;
        }
        self.size_hint = self.size_hint.saturating_sub(vec.len()); // size_hint can be too small!
        Some(Ok(vec))
    }
}

pub fn random_poly() -> RusticResult<u64> {
    for _ in 0..constants::RAND_POLY_MAX_TRIES {
        let mut poly: u64 = rng().random();

        // mask away bits above bit 53
        poly &= (1 << 54) - 1;

        // set highest and lowest bit so that the degree is 53 and the
        // polynomial is not trivially reducible
        poly |= (1 << 53) | 1;

        if poly.irreducible() {
            return Ok(poly);
        }
    }

    Err(RusticError::new(
        ErrorKind::Internal,
        "No suitable polynomial found, this should essentially never happen. Please try again.",
    )
    .ask_report())
}

/// A trait for extending polynomials.
pub(crate) trait PolynomExtend {
    /// Returns true IFF x is irreducible over `F_2`.
    fn irreducible(&self) -> bool;

    /// Returns the degree of the polynomial.
    fn gcd(self, other: Self) -> Self;

    /// Adds two polynomials.
    fn add(self, other: Self) -> Self;

    /// Multiplies two polynomials modulo another polynomial.
    fn mulmod(self, other: Self, modulo: Self) -> Self;
}

// implementation goes along the lines of
// https://github.com/restic/chunker/blob/master/polynomials.go
impl PolynomExtend for Polynom64 {
    // Irreducible returns true IFF x is irreducible over F_2. This function
    // uses Ben Or's reducibility test.
    //
    // For details see "Tests and Constructions of Irreducible Polynomials over
    // Finite Fields".
    fn irreducible(&self) -> bool {
        for i in 1..=self.degree() / 2 {
            if self.gcd(qp(i, *self)) != 1 {
                return false;
            }
        }
        true
    }

    fn gcd(self, other: Self) -> Self {
        if other == 0 {
            return self;
        }

        if self == 0 {
            return other;
        }

        if self.degree() < other.degree() {
            self.gcd(other.modulo(&self))
        } else {
            other.gcd(self.modulo(&other))
        }
    }

    fn add(self, other: Self) -> Self {
        self ^ other
    }

    fn mulmod(self, other: Self, modulo: Self) -> Self {
        if self == 0 || other == 0 {
            return 0;
        }

        let mut res: Self = 0;
        let mut a = self;
        let mut b = other;

        if b & 1 > 0 {
            res = res.add(a).modulo(&modulo);
        }

        while b != 0 {
            a = (a << 1).modulo(&modulo);
            b >>= 1;
            if b & 1 > 0 {
                res = res.add(a).modulo(&modulo);
            }
        }

        res
    }
}

// qp computes the polynomial (x^(2^p)-x) mod g. This is needed for the
// reducibility test.
fn qp(p: i32, g: Polynom64) -> Polynom64 {
    // start with x
    let mut res: Polynom64 = 2;

    for _ in 0..p {
        // repeatedly square res
        res = res.mulmod(res, g);
    }

    // add x
    res.add(2).modulo(&g)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::hasher::hash;
    use insta::assert_ron_snapshot;
    use rand::prelude::*;
    use std::io::{Cursor, repeat};

    /// The Splitmask is used to determine if a chunk is a chunk boundary.
    const SIZE: usize = 1 << 20;
    /// The size of a megabyte.
    const MB: usize = 1024 * constants::KB;
    /// The minimum size of a chunk.
    const MIN_SIZE: usize = 512 * constants::KB;
    /// The maximum size of a chunk.
    const MAX_SIZE: usize = 8 * MB;

    fn chunker<R: Read + Send>(reader: R, size_hint: usize) -> ChunkIter<R> {
        let poly = 0x003D_A335_8B4D_C173;
        let tables = RabinTables::for_polynom(poly).unwrap();
        ChunkIter::new(tables, SIZE, MIN_SIZE, MAX_SIZE, reader, size_hint).unwrap()
    }

    #[test]
    fn a_polynomial_of_degree_below_8_is_refused() {
        assert!(RabinTables::for_polynom(0x7f).is_err());
        assert!(RabinTables::for_polynom(0x1ff).is_ok());
    }

    #[test]
    fn chunk_random() {
        const RANDOM_DATA_SIZE: usize = 32 * 1024 * 1024;
        const SEED: u64 = 23;
        let mut rng = StdRng::seed_from_u64(SEED);
        let mut data = vec![0u8; RANDOM_DATA_SIZE];
        rng.fill_bytes(&mut data);
        let mut reader = Cursor::new(data);
        let chunker = chunker(&mut reader, 0);
        let chunks: Vec<_> = chunker
            .map(|chunk| {
                let chunk = chunk.unwrap();
                (chunk.len(), hash(&chunk))
            })
            .collect();

        assert_ron_snapshot!(chunks);
    }

    #[test]
    fn chunk_empty() {
        let empty: Vec<u8> = vec![];
        let mut reader = Cursor::new(empty);
        let chunker = chunker(&mut reader, 0);

        assert_eq!(0, chunker.into_iter().count());
    }

    #[test]
    fn chunk_empty_wrong_hint() {
        let empty: Vec<u8> = vec![];
        let mut reader = Cursor::new(empty);
        let chunker = chunker(&mut reader, 100);

        assert_eq!(0, chunker.into_iter().count());
    }

    #[test]
    fn chunk_zeros() {
        let mut reader = repeat(0u8);
        let mut chunker = chunker(&mut reader, usize::MAX);

        let chunk = chunker.next().unwrap().unwrap();
        assert_eq!(MIN_SIZE, chunk.len());
    }
}
