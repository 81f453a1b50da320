//! The chunked transfer coding (RFC 9112 §7.1), decoded incrementally over whatever part of the
//! body has been read. Pure: it says how many bytes to skip and how many are data; the caller
//! owns the buffer. Extensions are read and dropped; trailer lines are handed to the caller.
//!
//! Strict where hyper's decoder is strict (the two upstream paths share one policy): a size line
//! ends in CRLF, never a bare LF; whitespace may follow the size only before an extension or the
//! line's end (RFC 9112 §7.1.1 BWS).

/// Where the decoder is between calls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Chunked {
    /// At a chunk-size line.
    #[default]
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// After a chunk's data, at its CRLF.
    DataEnd,
    /// After the last (zero-size) chunk, at a trailer line or the final CRLF; with the bytes of
    /// trailer lines so far.
    Trailer(usize),
    /// The whole body has been read.
    Done,
}

impl Chunked {
    /// The finished state, for matching.
    pub const DONE: Chunked = Chunked::Done;
}

/// What to do with the front of the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Skip `skip` bytes of framing, then `len` bytes are body data.
    Data {
        skip: usize,
        len: usize,
    },
    /// Skip this many bytes of framing and decode again.
    Skip(usize),
    /// A trailer field line of `len` bytes (without its CRLF); skip `len + 2` after reading it.
    Trailer(usize),
    /// Skip this many bytes: the body has ended.
    Done(usize),
    /// Read more first.
    NeedMore,
    Invalid(&'static str),
}

/// A chunk-size line longer than this is refused (extensions included).
const MAX_LINE: usize = 4096;

/// Trailer lines beyond this many bytes in all are refused, as a response head beyond it is:
/// a header map holds at most 24,576 fields, and an endpoint must not be able to push it there.
const MAX_TRAILERS: usize = super::framing::MAX_HEAD;

impl Chunked {
    /// Decodes from the front of `buf`, advancing the state past what it returns.
    pub fn decode(&mut self, buf: &[u8]) -> Decoded {
        match *self {
            Chunked::Done => Decoded::Done(0),
            Chunked::Data(remaining) => {
                if buf.is_empty() {
                    return Decoded::NeedMore;
                }
                let len = usize::try_from(remaining)
                    .unwrap_or(usize::MAX)
                    .min(buf.len());
                *self = match remaining - len as u64 {
                    0 => Chunked::DataEnd,
                    left => Chunked::Data(left),
                };
                Decoded::Data { skip: 0, len }
            }
            Chunked::DataEnd => match buf {
                [b'\r', b'\n', ..] => {
                    *self = Chunked::Size;
                    Decoded::Skip(2)
                }
                [] | [b'\r'] => Decoded::NeedMore,
                _ => Decoded::Invalid("chunk data not followed by CRLF"),
            },
            Chunked::Size => {
                let Some(line) = line(buf) else {
                    return match buf.len() > MAX_LINE {
                        true => Decoded::Invalid("chunk size line too long"),
                        false => Decoded::NeedMore,
                    };
                };
                let digits = buf[..line].split(|b| *b == b';').next().unwrap_or_default();
                if buf[..line].contains(&b'\n')
                    || digits.first().is_some_and(|b| !b.is_ascii_hexdigit())
                {
                    return Decoded::Invalid("invalid chunk size line");
                }
                let Some(size) = parse_hex(digits.trim_ascii_end()) else {
                    return Decoded::Invalid("invalid chunk size");
                };
                let skip = line + 2;
                if size == 0 {
                    *self = Chunked::Trailer(0);
                    return Decoded::Skip(skip);
                }
                *self = Chunked::Data(size);
                Decoded::Skip(skip)
            }
            Chunked::Trailer(seen) => match line(buf) {
                Some(0) => {
                    *self = Chunked::Done;
                    Decoded::Done(2)
                }
                Some(n) if buf[..n].contains(&b'\n') => Decoded::Invalid("bare LF in a trailer"),
                Some(n) if seen + n + 2 > MAX_TRAILERS => Decoded::Invalid("trailers too large"),
                Some(n) => {
                    *self = Chunked::Trailer(seen + n + 2);
                    Decoded::Trailer(n)
                }
                None if buf.len() > MAX_LINE => Decoded::Invalid("trailer line too long"),
                None => Decoded::NeedMore,
            },
        }
    }
}

/// The length of the first line (before its CRLF), if the CRLF has arrived.
fn line(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

fn parse_hex(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, d| {
        let v = (*d as char).to_digit(16)?;
        Some(n << 4 | u64::from(v))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `wire` fed in pieces of `step` bytes; returns the data and whether it ended.
    fn decode_all(wire: &[u8], step: usize) -> Result<(Vec<u8>, bool), &'static str> {
        let mut state = Chunked::default();
        let (mut buf, mut data, mut fed) = (Vec::new(), Vec::new(), 0);
        loop {
            match state.decode(&buf) {
                Decoded::Data { skip, len } => {
                    data.extend_from_slice(&buf[skip..skip + len]);
                    buf.drain(..skip + len);
                }
                Decoded::Skip(n) => {
                    buf.drain(..n);
                }
                Decoded::Trailer(n) => {
                    buf.drain(..n + 2);
                }
                Decoded::Done(n) => {
                    buf.drain(..n);
                    return Ok((data, true));
                }
                Decoded::Invalid(why) => return Err(why),
                Decoded::NeedMore if fed >= wire.len() => return Ok((data, false)),
                Decoded::NeedMore => {
                    let end = (fed + step).min(wire.len());
                    buf.extend_from_slice(&wire[fed..end]);
                    fed = end;
                }
            }
        }
    }

    #[test]
    fn decodes_in_any_split() {
        let wire =
            b"5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-trailer: 1\r\n\r\n";
        for step in [1, 2, 3, 7, 100] {
            let (data, done) = decode_all(wire, step).unwrap();
            assert!(done, "step {step}");
            assert_eq!(data, b"helloabcdefghijklmnopqrstuvwxyz", "step {step}");
        }
    }

    #[test]
    fn whitespace_may_end_the_size_and_trailers_are_handed_over() {
        let (data, done) = decode_all(b"5  \r\nhello\r\n5 ;x\r\nworld\r\n0\r\n\r\n", 3).unwrap();
        assert!(done);
        assert_eq!(data, b"helloworld");
        let mut state = Chunked::Trailer(0);
        assert_eq!(state.decode(b"x-sum: 1\r\n\r\n"), Decoded::Trailer(8));
        assert_eq!(state, Chunked::Trailer(10));
    }

    #[test]
    fn trailers_are_bounded_like_a_head() {
        let mut wire = b"0\r\n".to_vec();
        for i in 0..20_000 {
            wire.extend_from_slice(format!("t{i}:\r\n").as_bytes());
        }
        wire.extend_from_slice(b"\r\n");
        assert_eq!(decode_all(&wire, 4096), Err("trailers too large"));
    }

    #[test]
    fn an_unfinished_body_is_not_done() {
        assert_eq!(
            decode_all(b"5\r\nhel", 4).unwrap(),
            (b"hel".to_vec(), false)
        );
    }

    #[test]
    fn malformed_framing_is_refused() {
        for bad in [
            &b"zz\r\n"[..],
            b"5\r\nhelloXX",
            b"\r\n",
            b"11111111111111111\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b" 5\r\nhello\r\n",
            b"5 5\r\nhello\r\n",
        ] {
            assert!(decode_all(bad, 100).is_err(), "{bad:?}");
        }
    }
}
