//! Fixed-width base36 (`0-9a-z`) for the parts of a join token, as Swarm's tokens use:
//! short, case-free, and safe in a shell or a URL without quoting.
//!
//! A value of `N` bytes always encodes to `width(N)` characters (zero-padded), so a
//! token has one spelling and its parts can be length-checked before decoding.

const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// Characters needed for any `bytes`-byte big-endian number: ceil(8 * bytes / log2(36)).
pub(crate) fn width(bytes: usize) -> usize {
    // log2(36) = 5.169925...; integer form of ceil(bytes * 8 / 5.169925)
    let bits = bytes as u64 * 8 * 1_000_000;
    bits.div_ceil(5_169_925) as usize
}

/// Encodes a big-endian number as exactly `width(bytes.len())` base36 digits.
pub(crate) fn encode(bytes: &[u8]) -> String {
    let mut num = bytes.to_vec();
    let mut digits = Vec::with_capacity(width(bytes.len()));
    for _ in 0..width(bytes.len()) {
        // One long division of `num` by 36; the remainder is the next digit.
        let mut rem: u32 = 0;
        for b in num.iter_mut() {
            let cur = (rem << 8) | u32::from(*b);
            *b = (cur / 36) as u8;
            rem = cur % 36;
        }
        digits.push(ALPHABET[rem as usize]);
    }
    digits.reverse();
    // Every byte is from ALPHABET, so this is ASCII.
    digits.into_iter().map(char::from).collect()
}

/// Why a base36 field did not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Base36Error {
    /// Wrong number of characters (`expected`, `got`).
    Length { expected: usize, got: usize },
    /// A character outside `0-9a-z`, at a 0-based character index.
    Char { index: usize, ch: char },
    /// The digits name a number larger than `N` bytes can hold.
    Overflow,
}

/// Decodes exactly `width(N)` base36 digits into `N` big-endian bytes.
pub(crate) fn decode<const N: usize>(text: &str) -> Result<[u8; N], Base36Error> {
    let expected = width(N);
    let got = text.chars().count();
    if got != expected {
        return Err(Base36Error::Length { expected, got });
    }
    let mut out = [0u8; N];
    for (index, ch) in text.chars().enumerate() {
        let digit = match ch {
            '0'..='9' => ch as u32 - '0' as u32,
            'a'..='z' => ch as u32 - 'a' as u32 + 10,
            _ => return Err(Base36Error::Char { index, ch }),
        };
        // out = out * 36 + digit, from the least significant byte up.
        let mut carry = digit;
        for b in out.iter_mut().rev() {
            let cur = u32::from(*b) * 36 + carry;
            *b = (cur & 0xff) as u8;
            carry = cur >> 8;
        }
        if carry != 0 {
            return Err(Base36Error::Overflow);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn widths_match_swarm_token_parts() {
        // A SHA-256 digest is 50 characters and a 128-bit secret 25, as in Swarm's tokens.
        assert_eq!(width(32), 50);
        assert_eq!(width(16), 25);
        assert_eq!(width(1), 2);
    }

    #[test]
    fn known_values() {
        assert_eq!(encode(&[0]), "00");
        assert_eq!(encode(&[35]), "0z");
        assert_eq!(encode(&[36]), "10");
        assert_eq!(encode(&[255]), "73");
        assert_eq!(decode::<1>("73"), Ok([255]));
        assert_eq!(decode::<1>("74"), Err(Base36Error::Overflow));
        assert_eq!(
            decode::<1>("7A"),
            Err(Base36Error::Char { index: 1, ch: 'A' })
        );
        assert_eq!(
            decode::<1>("123"),
            Err(Base36Error::Length {
                expected: 2,
                got: 3
            })
        );
    }

    proptest! {
        #[test]
        fn roundtrip_32(bytes in proptest::array::uniform32(any::<u8>())) {
            let text = encode(&bytes);
            prop_assert_eq!(text.len(), 50);
            prop_assert_eq!(decode::<32>(&text), Ok(bytes));
        }

        #[test]
        fn roundtrip_16(bytes in proptest::array::uniform16(any::<u8>())) {
            prop_assert_eq!(decode::<16>(&encode(&bytes)), Ok(bytes));
        }

        #[test]
        fn decode_never_panics(text in "\\PC{0,60}") {
            let _ = decode::<32>(&text);
            let _ = decode::<16>(&text);
        }
    }
}
