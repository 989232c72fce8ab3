//! The on-disk frame of the audit journal's segment files.
//!
//! A segment is a sequence of frames, each `magic (4) | kind (1) | length (4, LE) | crc32 (4,
//! LE, over kind, length and payload) | payload`. Kind `R` holds a record's JSON, kind `C` a
//! checkpoint's JSON. An append writes its records and then its checkpoint in one `write`, so a
//! segment read from the start always ends an append with a `C` frame; anything after the last
//! one is an append a crash cut short.
//!
//! The checksum finds torn and damaged frames; it is not the tamper evidence (anyone can
//! recompute it): the hash chain and the signed checkpoints are.

/// Marks the start of every frame.
pub const MAGIC: [u8; 4] = *b"WJF1";
/// Header bytes before the payload.
pub const HEADER: usize = 13;
/// The largest payload a frame may hold: a record is a few hundred bytes, but one can carry
/// what a caller sent (a JWT's audiences), and gRPC messages reach 4 MiB. Bounds what a damaged
/// length field makes a reader allocate; a record larger than this is refused before it is
/// written (an acknowledged record must always read back).
pub const MAX_PAYLOAD: u32 = 16 << 20;

/// What a frame holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A record (JSON of `writ_audit::Record`).
    Record,
    /// A checkpoint (JSON of `writ_audit::Checkpoint`).
    Checkpoint,
}

impl Kind {
    fn byte(self) -> u8 {
        match self {
            Kind::Record => b'R',
            Kind::Checkpoint => b'C',
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        match b {
            b'R' => Some(Kind::Record),
            b'C' => Some(Kind::Checkpoint),
            _ => None,
        }
    }
}

/// Appends one frame holding `payload` to `out`; refuses (writing nothing) a payload over
/// [`MAX_PAYLOAD`], which no reader would accept.
pub fn encode(out: &mut Vec<u8>, kind: Kind, payload: &[u8]) -> Result<(), TooLarge> {
    let len = match u32::try_from(payload.len()) {
        Ok(l) if l <= MAX_PAYLOAD => l,
        _ => return Err(TooLarge(payload.len())),
    };
    out.extend_from_slice(&MAGIC);
    out.push(kind.byte());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc(kind.byte(), len, payload).to_le_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// A payload over [`MAX_PAYLOAD`] (its length).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a journal record of {0} bytes is over the {MAX_PAYLOAD}-byte limit")]
pub struct TooLarge(pub usize);

fn crc(kind: u8, len: u32, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&[kind]);
    h.update(&len.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// A frame's header, read before its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// What the payload holds.
    pub kind: Kind,
    /// Payload bytes.
    pub len: u32,
    crc: u32,
}

impl Header {
    /// Bytes of the whole frame.
    pub fn frame_len(&self) -> u64 {
        HEADER as u64 + u64::from(self.len)
    }

    /// Whether `payload` is what this header was written with.
    pub fn check(&self, payload: &[u8]) -> bool {
        payload.len() == self.len as usize && crc(self.kind.byte(), self.len, payload) == self.crc
    }
}

/// Parses a header; `None` when the bytes are not one (wrong magic or kind, or a length no
/// frame has).
pub fn header(b: &[u8; HEADER]) -> Option<Header> {
    if b[..4] != MAGIC {
        return None;
    }
    let kind = Kind::from_byte(b[4])?;
    let len = u32::from_le_bytes([b[5], b[6], b[7], b[8]]);
    let crc = u32::from_le_bytes([b[9], b[10], b[11], b[12]]);
    (len <= MAX_PAYLOAD).then_some(Header { kind, len, crc })
}

/// One whole frame parsed from `b` (its start): the header and the payload, or `None` when `b`
/// does not start with an intact frame.
pub fn decode(b: &[u8]) -> Option<(Header, &[u8])> {
    let h = header(b.get(..HEADER)?.try_into().ok()?)?;
    let payload = b.get(HEADER..HEADER + h.len as usize)?;
    h.check(payload).then_some((h, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_damage_is_seen() {
        let mut b = Vec::new();
        encode(&mut b, Kind::Record, b"{\"seq\":1}").unwrap();
        encode(&mut b, Kind::Checkpoint, b"{}").unwrap();
        assert!(encode(&mut b, Kind::Record, &vec![b' '; MAX_PAYLOAD as usize + 1]).is_err());
        let (h, p) = decode(&b).unwrap();
        assert_eq!((h.kind, p), (Kind::Record, &b"{\"seq\":1}"[..]));
        let rest = &b[h.frame_len() as usize..];
        assert_eq!(decode(rest).unwrap().1, b"{}");
        // Any flipped byte (magic, kind, length, checksum or payload) is seen.
        for i in 0..h.frame_len() as usize {
            let mut d = b.clone();
            d[i] ^= 0x20;
            assert!(decode(&d).is_none(), "byte {i}");
        }
        // Cut short.
        assert!(decode(&b[..HEADER + 3]).is_none());
        // A length past the bound is not a header.
        let mut d = b.clone();
        d[5..9].copy_from_slice(&(MAX_PAYLOAD + 1).to_le_bytes());
        assert!(header(d[..HEADER].try_into().unwrap()).is_none());
    }
}
