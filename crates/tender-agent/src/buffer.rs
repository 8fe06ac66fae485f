//! The agent's store-and-forward buffer: while the agent is offline, telemetry and events wait
//! here, on disk, and go out in order once it is back. The buffer is bounded: when it is full the
//! oldest records are dropped, and the number dropped is counted (and survives restarts).
//!
//! Use: [`Buffer::append`] every outgoing record (a topic suffix such as `telemetry` and the
//! payload); a sender [`Buffer::peek`]s a window of records from the head, publishes them and,
//! once the server acknowledged (PUBACK), calls [`Buffer::ack`] with the last sequence number
//! delivered. On shutdown call [`Buffer::flush`]. Delivery is at-least-once: after a crash, records
//! that were sent but whose acknowledgement was not yet persisted are delivered again.
//!
//! The API is synchronous (`std::fs`); records are small, so the agent may call it from a task
//! directly or through `spawn_blocking`. One directory belongs to one [`Buffer`] at a time: the
//! caller must not open the same directory twice.
//!
//! # On disk
//!
//! A directory holding:
//!
//! - Segment files `<first seq, 20 digits>.seg` (e.g. `00000000000000000001.seg`), each a run of
//!   records with consecutive sequence numbers starting at the one in its name. Every record is
//!   framed as
//!
//!   | bytes | field |
//!   |---|---|
//!   | 1 | magic `0xA7` |
//!   | 1 | format version `1` |
//!   | 4 | `len`, u32 LE: the length of the body below |
//!   | 4 | CRC-32 (IEEE) of the body, u32 LE |
//!   | 8 | body: `seq`, u64 LE |
//!   | 1 | body: suffix length |
//!   | n | body: suffix, UTF-8 |
//!   | … | body: payload |
//!
//!   so a record costs [`RECORD_OVERHEAD`] (19) bytes plus its suffix and payload; that framed size
//!   is what [`Limits::max_record_bytes`] bounds. Appends go to the newest segment; a new one is
//!   started when a record would take the newest past [`Limits::segment_bytes`].
//! - `head` (24 bytes): magic `TBH1`, the sequence number of the first unacknowledged record (u64
//!   LE), the count of records dropped so far (u64 LE), and a CRC-32 of those 20 bytes. It is
//!   replaced atomically: `head.tmp` is written and fsynced, renamed over `head`, and the directory
//!   is fsynced.
//!
//! Other files in the directory are ignored. Sequence numbers start at 1 and are never reused
//! within a run. [`Buffer::bytes`] (and the [`Limits::max_bytes`] bound) counts segment files only.
//!
//! # Durability (fsync discipline)
//!
//! A killed process (`kill -9`) loses nothing that [`Buffer::append`] accepted, whatever the
//! policy: the data is in the kernel's page cache. Power loss is what [`SyncPolicy`] is about:
//!
//! - [`SyncPolicy::Always`] (the default): every append is written and `fdatasync`ed before it
//!   returns; a new segment file is created and the directory fsynced before its first record is
//!   written. A record whose append returned `Ok` survives power loss. Costs one fsync per record
//!   (a few ms on flash), which is fine at telemetry rates.
//! - [`SyncPolicy::EveryN`]`(n)`: `fdatasync` after every `n`th append, when a segment is
//!   finished, and on [`Buffer::sync`]/[`Buffer::flush`]; power loss can lose up to the last `n`
//!   records. A failed periodic fsync is logged and retried at the next append.
//! - [`SyncPolicy::Never`]: no fsync at all, for the head file either (the simulator, tests).
//!
//! The head is written (atomically, as above) every [`Limits::head_write_every`] acks, on
//! [`Buffer::flush_head`], before any segment file is deleted (a segment is only unlinked once a
//! durable head is past it, so a crash can never make acknowledged records look dropped), and when
//! records are dropped for room. Losing head updates only causes redelivery, never loss.
//!
//! # Recovery on open
//!
//! Every segment is scanned and every record's CRC, length and sequence number checked:
//!
//! - A bad record in the newest segment (torn by a crash: short, bad length, bad CRC) is cut off
//!   with everything after it; [`OpenReport::truncated_bytes`] says how much.
//! - A bad record in an older segment: the rest of that segment is skipped (the file is truncated
//!   there). The records lost are known exactly from the next segment's first sequence number;
//!   they are reported in [`OpenReport::corrupt_records_skipped`] and counted as dropped.
//! - A missing or corrupt head file: delivery starts at the oldest record present (redelivery)
//!   and the dropped count restarts from zero.
//!
//! Sequence numbers missing between the head and the end (lost to corruption) count as dropped:
//! [`Buffer::dropped_total`] includes them at once, and the persisted count takes them over when
//! the head moves past them, atomically with the head, so nothing is counted twice.
//!
//! No file content makes [`Buffer::open`] or [`Buffer::peek`] panic or loop; lengths are checked
//! against the file before anything is allocated. Corruption found later by `peek` is handled like
//! corruption in an older segment (the rest of the segment is skipped and logged).
//!
//! # Write errors
//!
//! A failed append (e.g. `ENOSPC`) returns [`BufferError::Io`] and cuts the segment back to the
//! last whole record, so later appends are unaffected; if even that fails, the segment is closed
//! and the next append starts a new one (the partial record is then cut at the next open).
//!
//! # Costs
//!
//! An open buffer keeps a few words per segment (first sequence number, record count, size) and
//! two cached read positions, nothing of the payloads. It holds at most one file descriptor (the
//! newest segment, opened at the first append); `peek` opens a second one for its duration.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Framing bytes per record: magic, version, length, CRC, sequence number and suffix length.
pub const RECORD_OVERHEAD: u64 = HEADER_LEN + BODY_FIXED;
/// The largest [`Limits::max_record_bytes`] accepted; also the largest record `open` will read.
pub const MAX_RECORD_LIMIT: u64 = 16 << 20;

/// The sequence number of the first record of a new buffer.
const FIRST_SEQ: u64 = 1;
const MAGIC: u8 = 0xA7;
const VERSION: u8 = 1;
/// Magic, version, `len` (u32) and CRC (u32).
const HEADER_LEN: u64 = 10;
/// The fixed part of the body: `seq` (u64) and the suffix length (u8).
const BODY_FIXED: u64 = 9;
const FIXED_LEN: usize = (HEADER_LEN + BODY_FIXED) as usize;
const HEAD_FILE: &str = "head";
const HEAD_TMP: &str = "head.tmp";
const HEAD_MAGIC: [u8; 4] = *b"TBH1";
const HEAD_LEN: usize = 24;
const SEGMENT_EXT: &str = ".seg";

/// When appended records are fsynced; see the module documentation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyncPolicy {
    /// `fdatasync` after every append: survives power loss.
    #[default]
    Always,
    /// `fdatasync` after every `n`th append: power loss may lose up to `n` records.
    EveryN(u32),
    /// Never fsync (head and directory included): survives a killed process, not power loss.
    Never,
}

/// Bounds and durability of a [`Buffer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The most bytes of segment files kept; beyond, the oldest segments are dropped.
    pub max_bytes: u64,
    /// A new segment is started when a record would take the current one past this size.
    pub segment_bytes: u64,
    /// The largest record accepted, framed ([`RECORD_OVERHEAD`] + suffix + payload).
    pub max_record_bytes: u64,
    pub sync: SyncPolicy,
    /// The head file is written every this many acks (and on [`Buffer::flush_head`]).
    pub head_write_every: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 16 << 20,
            segment_bytes: 1 << 20,
            max_record_bytes: 256 << 10,
            sync: SyncPolicy::Always,
            head_write_every: 64,
        }
    }
}

impl Limits {
    fn validate(&self) -> Result<(), BufferError> {
        let problem = if self.max_record_bytes < RECORD_OVERHEAD {
            format!("max_record_bytes must be at least {RECORD_OVERHEAD}")
        } else if self.max_record_bytes > MAX_RECORD_LIMIT {
            format!("max_record_bytes must be at most {MAX_RECORD_LIMIT}")
        } else if self.segment_bytes < self.max_record_bytes {
            "segment_bytes must be at least max_record_bytes".to_owned()
        } else if self.max_bytes < self.segment_bytes {
            "max_bytes must be at least segment_bytes".to_owned()
        } else if self.head_write_every == 0 {
            "head_write_every must be at least 1".to_owned()
        } else if self.sync == SyncPolicy::EveryN(0) {
            "sync EveryN(n) needs n >= 1".to_owned()
        } else {
            return Ok(());
        };
        Err(BufferError::InvalidLimits(problem))
    }
}

/// Errors from the buffer. After any of them the buffer is still usable.
#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("record of {size} bytes (framed) is larger than the buffer's limit of {max} bytes")]
    RecordTooLarge { size: u64, max: u64 },
    #[error("topic suffix of {len} bytes is too long for the buffer (at most 255)")]
    SuffixTooLong { len: usize },
    #[error("invalid buffer limits: {0}")]
    InvalidLimits(String),
    #[error("{path}: sequence numbers exhausted")]
    SequenceExhausted { path: PathBuf },
}

/// A buffered record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    /// The topic suffix given to [`Buffer::append`], e.g. `telemetry`.
    pub suffix: String,
    pub payload: Vec<u8>,
}

/// What [`Buffer::append`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendOutcome {
    /// The record's sequence number.
    pub seq: u64,
    /// Undelivered records dropped by this call to make room.
    pub dropped: u64,
}

/// What [`Buffer::open`] found and repaired.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Segment files in use after the open.
    pub segments: usize,
    /// Records waiting for delivery.
    pub pending: u64,
    /// Bytes cut from damaged segment tails.
    pub truncated_bytes: u64,
    /// Undelivered records lost to corruption: exact for older segments; a torn tail of the
    /// newest segment counts as one.
    pub corrupt_records_skipped: u64,
    /// The head file was missing or corrupt: delivery restarts at the oldest record.
    pub head_reset: bool,
    /// One line per problem, for the log.
    pub messages: Vec<String>,
}

impl OpenReport {
    /// True when nothing had to be repaired.
    pub fn is_clean(&self) -> bool {
        self.messages.is_empty()
    }
}

/// The index entry of one segment file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Segment {
    /// The sequence number in the file name: that of its first record.
    first: u64,
    /// Valid records, sequence numbers `first..first + count`.
    count: u64,
    /// Bytes of the file holding those records.
    bytes: u64,
}

impl Segment {
    fn end(&self) -> u64 {
        self.first.saturating_add(self.count)
    }
}

/// A known read position: record `seq` starts at byte `offset` of the segment holding it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cursor {
    seq: u64,
    offset: u64,
}

/// The on-disk store-and-forward buffer; see the module documentation.
#[derive(Debug)]
pub struct Buffer {
    dir: PathBuf,
    limits: Limits,
    /// Oldest first; sequence ranges ascending, possibly with gaps (lost records).
    segments: VecDeque<Segment>,
    /// Whether the last segment takes appends (otherwise the next append starts a new one).
    tail_open: bool,
    /// The last segment, open for writing (only when `tail_open`; opened lazily).
    writer: Option<File>,
    /// Appends since the last fsync of `writer`.
    unsynced: u32,
    next_seq: u64,
    /// The first unacknowledged sequence number.
    head: u64,
    /// Records dropped before `head` (persisted with it).
    dropped: u64,
    /// `(head, dropped)` as last written to the head file.
    persisted: Option<(u64, u64)>,
    acks_since_write: u32,
    cursors: [Option<Cursor>; 2],
    hooks: Hooks,
}

impl Buffer {
    /// Opens (creating it if needed) the buffer in `dir`, repairing what a crash or damage left.
    pub fn open(dir: &Path, limits: Limits) -> Result<(Buffer, OpenReport), BufferError> {
        limits.validate()?;
        fs::create_dir_all(dir).map_err(io_at(dir))?;
        let mut report = OpenReport::default();
        let _ = fs::remove_file(dir.join(HEAD_TMP));
        let head_path = dir.join(HEAD_FILE);
        let head_read = read_head(&head_path)?;
        let file_head = match head_read {
            HeadRead::Valid { head, .. } => head,
            _ => 0,
        };

        let mut firsts = list_segments(dir)?;
        firsts.sort_unstable();
        let mut segments: VecDeque<Segment> = VecDeque::with_capacity(firsts.len());
        for (i, &first) in firsts.iter().enumerate() {
            let path = segment_path(dir, first);
            let newest = i + 1 == firsts.len();
            let scan = scan_segment(&path, first)?;
            if let Some(prev) = segments.back()
                && first < prev.end()
            {
                report.corrupt_records_skipped += scan.count;
                report.messages.push(format!(
                    "{}: overlaps the previous segment (ending before {}): removed with its {} record(s)",
                    path.display(),
                    prev.end(),
                    scan.count
                ));
                remove_file(&path)?;
                continue;
            }
            if let Some(problem) = &scan.problem {
                let cut = scan.file_len.saturating_sub(scan.valid_bytes);
                truncate_file(&path, scan.valid_bytes, limits.sync != SyncPolicy::Never)?;
                report.truncated_bytes += cut;
                if newest {
                    report.corrupt_records_skipped += 1;
                    report.messages.push(format!(
                        "{}: {problem} at byte {}: cut {cut} byte(s) (a record torn by a crash or a damaged tail); {} record(s) kept",
                        path.display(),
                        scan.valid_bytes,
                        scan.count
                    ));
                } else {
                    let end = first.saturating_add(scan.count);
                    let next_first = firsts.get(i + 1).copied().unwrap_or(end);
                    let lost = next_first.saturating_sub(end.max(file_head));
                    report.corrupt_records_skipped += lost;
                    report.messages.push(format!(
                        "{}: {problem} at byte {}: skipped the rest of the segment ({cut} bytes, {lost} undelivered record(s), counted as dropped)",
                        path.display(),
                        scan.valid_bytes
                    ));
                }
            }
            if scan.count == 0 && !newest {
                remove_file(&path)?;
                continue;
            }
            segments.push_back(Segment {
                first,
                count: scan.count,
                bytes: scan.valid_bytes,
            });
        }

        let oldest = segments.iter().find(|s| s.count > 0).map(|s| s.first);
        let last_end = segments.back().map_or(FIRST_SEQ, Segment::end);
        let (head, dropped, persisted) = match head_read {
            HeadRead::Valid { head, dropped } => (head, dropped, Some((head, dropped))),
            HeadRead::Missing => {
                if oldest.is_some() {
                    report.head_reset = true;
                    report.messages.push(format!(
                        "{}: missing: delivering from the oldest record",
                        head_path.display()
                    ));
                }
                (oldest.unwrap_or(last_end), 0, None)
            }
            HeadRead::Corrupt(reason) => {
                report.head_reset = true;
                report.messages.push(format!(
                    "{}: {reason}: delivering from the oldest record; the dropped count restarts at 0",
                    head_path.display()
                ));
                (oldest.unwrap_or(last_end), 0, None)
            }
        };
        let head = head.max(FIRST_SEQ);
        let next_seq = last_end.max(head);
        let tail_open = segments.back().is_some_and(|s| s.end() == next_seq);
        let mut buffer = Buffer {
            dir: dir.to_owned(),
            limits,
            segments,
            tail_open,
            writer: None,
            unsynced: 0,
            next_seq,
            head,
            dropped,
            persisted,
            acks_since_write: 0,
            cursors: [None; 2],
            hooks: Hooks::default(),
        };
        let before = buffer.head;
        buffer.normalize_head();
        if buffer.head > before && report.corrupt_records_skipped == 0 {
            report.messages.push(format!(
                "{}: records {before}..{} are missing: counted as dropped",
                buffer.dir.display(),
                buffer.head
            ));
        }
        buffer.flush_head()?;
        buffer.gc()?;
        report.segments = buffer.segments.len();
        report.pending = buffer.len();
        Ok((buffer, report))
    }

    /// Appends a record. When the buffer is full, the oldest segments are dropped first (records
    /// not yet delivered included); the outcome says how many undelivered records that was.
    ///
    /// On error nothing was appended, but records may still have been dropped for room
    /// ([`Buffer::dropped_total`] counts them).
    pub fn append(&mut self, suffix: &str, payload: &[u8]) -> Result<AppendOutcome, BufferError> {
        if suffix.len() > usize::from(u8::MAX) {
            return Err(BufferError::SuffixTooLong { len: suffix.len() });
        }
        let size = RECORD_OVERHEAD
            .saturating_add(suffix.len() as u64)
            .saturating_add(payload.len() as u64);
        if size > self.limits.max_record_bytes {
            return Err(BufferError::RecordTooLarge {
                size,
                max: self.limits.max_record_bytes,
            });
        }
        if self.next_seq >= u64::MAX - 1 {
            return Err(BufferError::SequenceExhausted {
                path: self.dir.clone(),
            });
        }
        let dropped_before = self.dropped_total();
        let seq = self.next_seq;
        let frame = encode_record(seq, suffix, payload);
        let roll = match self.segments.back() {
            Some(s) if self.tail_open => {
                s.count > 0 && s.bytes.saturating_add(size) > self.limits.segment_bytes
            }
            _ => true,
        };
        if roll {
            self.seal_tail()?;
        }
        self.make_room(size)?;
        if !self.tail_open || self.segments.is_empty() {
            self.start_segment()?;
        }
        self.write_record(&frame)?;
        Ok(AppendOutcome {
            seq,
            dropped: self.dropped_total().saturating_sub(dropped_before),
        })
    }

    /// Up to `max` records from the head, in order, without removing them.
    pub fn peek(&mut self, max: usize) -> Result<Vec<Record>, BufferError> {
        let mut out = Vec::new();
        let mut seq = self.head;
        let mut start_cursor = None;
        let mut end_cursor = None;
        while out.len() < max && seq < self.next_seq {
            let Some(idx) = self
                .segments
                .iter()
                .position(|s| s.count > 0 && s.end() > seq)
            else {
                break;
            };
            let Some(seg) = self.segments.get(idx).copied() else {
                break;
            };
            seq = seq.max(seg.first);
            let path = segment_path(&self.dir, seg.first);
            let mut file = match File::open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.lose_rest(idx, seg.first, "the segment file is gone");
                    continue;
                }
                Err(e) => return Err(io_at(&path)(e)),
            };
            let (mut at, mut offset) = self.cursor_for(&seg, seq);
            if offset > 0 {
                file.seek(SeekFrom::Start(offset)).map_err(io_at(&path))?;
            }
            let mut reader = BufReader::new(file);
            let mut problem = None;
            while at < seg.end() && (at < seq || out.len() < max) {
                let keep = at >= seq;
                let remaining = seg.bytes.saturating_sub(offset);
                match read_frame(&mut reader, remaining, at, keep).map_err(io_at(&path))? {
                    Ok((len, record)) => {
                        if keep && out.is_empty() {
                            start_cursor = Some(Cursor { seq: at, offset });
                        }
                        offset += len;
                        at += 1;
                        out.extend(record);
                    }
                    Err(p) => {
                        problem = Some(format!("{p} at byte {offset}"));
                        break;
                    }
                }
            }
            if let Some(problem) = problem {
                self.lose_rest(idx, at, &problem);
                start_cursor = None;
                end_cursor = None;
            } else if at < seg.end() {
                end_cursor = Some(Cursor { seq: at, offset });
            }
            seq = at;
        }
        if start_cursor.is_some() {
            self.cursors[0] = start_cursor;
        }
        if end_cursor.is_some() {
            self.cursors[1] = end_cursor;
        }
        Ok(out)
    }

    /// Acknowledges every record up to and including `through_seq`: the head moves past it, and
    /// segments holding only acknowledged records are deleted. Stale acks are ignored.
    ///
    /// The head is persisted every [`Limits::head_write_every`] acks; on error the in-memory head
    /// has moved all the same (only its persistence failed, which means redelivery at worst).
    pub fn ack(&mut self, through_seq: u64) -> Result<(), BufferError> {
        if through_seq < self.head {
            return Ok(());
        }
        let to = through_seq.saturating_add(1).min(self.next_seq);
        self.move_head(to);
        self.normalize_head();
        self.acks_since_write = self.acks_since_write.saturating_add(1);
        if self.acks_since_write >= self.limits.head_write_every {
            self.write_head()?;
        }
        self.gc()
    }

    /// Writes the head file if the head or the dropped count changed since it was last written.
    pub fn flush_head(&mut self) -> Result<(), BufferError> {
        if self.persisted != Some((self.head, self.dropped)) {
            self.write_head()?;
        }
        Ok(())
    }

    /// Fsyncs appended records not yet fsynced (under [`SyncPolicy::EveryN`] or `Never`).
    pub fn sync(&mut self) -> Result<(), BufferError> {
        if self.unsynced > 0
            && let Some(writer) = &self.writer
        {
            writer
                .sync_data()
                .map_err(io_at(&segment_path(&self.dir, self.tail_first())))?;
        }
        self.unsynced = 0;
        Ok(())
    }

    /// [`Buffer::sync`] then [`Buffer::flush_head`]: what to call on shutdown.
    pub fn flush(&mut self) -> Result<(), BufferError> {
        self.sync()?;
        self.flush_head()
    }

    /// Records waiting for delivery.
    pub fn len(&self) -> u64 {
        self.present_between(self.head, self.next_seq)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of segment files.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// Undelivered records lost so far, to lack of room or to corruption (persisted).
    pub fn dropped_total(&self) -> u64 {
        let missing = self
            .next_seq
            .saturating_sub(self.head)
            .saturating_sub(self.len());
        self.dropped.saturating_add(missing)
    }

    /// The sequence number of the first unacknowledged record (or of the next append when empty).
    pub fn head_seq(&self) -> u64 {
        self.head
    }

    /// The sequence number the next append will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Records present in `from..to`.
    fn present_between(&self, from: u64, to: u64) -> u64 {
        self.segments
            .iter()
            .map(|s| s.end().min(to).saturating_sub(s.first.max(from)))
            .sum()
    }

    /// Moves the head forward to `to`: the records present on the way are acknowledged, the
    /// sequence numbers missing on the way are counted as dropped.
    fn move_head(&mut self, to: u64) {
        if to <= self.head {
            return;
        }
        let present = self.present_between(self.head, to);
        let missing = (to - self.head).saturating_sub(present);
        self.dropped = self.dropped.saturating_add(missing);
        self.head = to;
    }

    /// Moves the head off missing sequence numbers, onto the next record present (or the end).
    fn normalize_head(&mut self) {
        if self.head >= self.next_seq {
            return;
        }
        let target = match self
            .segments
            .iter()
            .find(|s| s.count > 0 && s.end() > self.head)
        {
            Some(s) if s.first <= self.head => return,
            Some(s) => s.first,
            None => self.next_seq,
        };
        self.move_head(target);
    }

    fn tail_first(&self) -> u64 {
        self.segments.back().map_or(self.next_seq, |s| s.first)
    }

    fn tail_index(&self) -> Option<usize> {
        if self.tail_open {
            self.segments.len().checked_sub(1)
        } else {
            None
        }
    }

    fn write_head(&mut self) -> Result<(), BufferError> {
        let tmp = self.dir.join(HEAD_TMP);
        let path = self.dir.join(HEAD_FILE);
        let sync = self.limits.sync != SyncPolicy::Never;
        {
            let mut file = File::create(&tmp).map_err(io_at(&tmp))?;
            file.write_all(&encode_head(self.head, self.dropped))
                .map_err(io_at(&tmp))?;
            if sync {
                file.sync_all().map_err(io_at(&tmp))?;
            }
        }
        fs::rename(&tmp, &path).map_err(io_at(&path))?;
        if sync {
            sync_dir(&self.dir).map_err(io_at(&self.dir))?;
        }
        self.persisted = Some((self.head, self.dropped));
        self.acks_since_write = 0;
        Ok(())
    }

    /// Deletes segments other than the open tail that hold no unacknowledged record, after making
    /// sure the head file on disk is past them.
    fn gc(&mut self) -> Result<(), BufferError> {
        let tail = self.tail_index();
        let head = self.head;
        let persisted_head = self.persisted.map_or(0, |p| p.0);
        let doomed = |i: usize, s: &Segment| Some(i) != tail && (s.count == 0 || s.end() <= head);
        let mut any = false;
        let mut need_head = false;
        for (i, s) in self.segments.iter().enumerate() {
            if doomed(i, s) {
                any = true;
                need_head |= s.count > 0 && s.end() > persisted_head;
            }
        }
        if !any {
            return Ok(());
        }
        if need_head {
            self.write_head()?;
        }
        let mut removed = Vec::new();
        let mut i = 0;
        self.segments.retain(|s| {
            let keep = !doomed(i, s);
            if !keep {
                removed.push(s.first);
            }
            i += 1;
            keep
        });
        self.remove_segment_files(&removed);
        Ok(())
    }

    fn remove_segment_files(&self, firsts: &[u64]) {
        for &first in firsts {
            let path = segment_path(&self.dir, first);
            if let Err(e) = fs::remove_file(&path)
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(path = %path.display(), error = %e, "could not delete a buffer segment");
            }
        }
    }

    /// Stops appending to the last segment (fsyncing what is pending), and deletes it if it is
    /// fully acknowledged.
    fn seal_tail(&mut self) -> Result<(), BufferError> {
        let writer = self.writer.take();
        self.tail_open = false;
        let unsynced = std::mem::take(&mut self.unsynced);
        if let Some(writer) = writer
            && unsynced > 0
            && matches!(self.limits.sync, SyncPolicy::EveryN(_))
        {
            writer
                .sync_data()
                .map_err(io_at(&segment_path(&self.dir, self.tail_first())))?;
        }
        self.gc()
    }

    /// Drops the oldest segments until `size` more bytes fit.
    fn make_room(&mut self, size: u64) -> Result<(), BufferError> {
        let mut removed = Vec::new();
        let dropped_before = self.dropped_total();
        while self.bytes().saturating_add(size) > self.limits.max_bytes {
            if self.tail_open && self.segments.len() == 1 {
                self.writer = None;
                self.tail_open = false;
                self.unsynced = 0;
            }
            let Some(s) = self.segments.pop_front() else {
                break;
            };
            removed.push(s.first);
            self.move_head(s.end());
        }
        if removed.is_empty() {
            return Ok(());
        }
        self.normalize_head();
        self.cursors = [None; 2];
        self.write_head()?;
        self.remove_segment_files(&removed);
        tracing::warn!(
            dir = %self.dir.display(),
            dropped = self.dropped_total().saturating_sub(dropped_before),
            "buffer full: dropped the oldest records"
        );
        Ok(())
    }

    /// Creates a new segment named after `next_seq` and makes it the open tail.
    fn start_segment(&mut self) -> Result<(), BufferError> {
        if self.segments.back().is_some_and(|s| s.count == 0)
            && let Some(empty) = self.segments.pop_back()
            && empty.first != self.next_seq
        {
            self.remove_segment_files(&[empty.first]);
        }
        self.writer = None;
        self.tail_open = false;
        self.unsynced = 0;
        let path = segment_path(&self.dir, self.next_seq);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io_at(&path))?;
        if self.limits.sync != SyncPolicy::Never {
            sync_dir(&self.dir).map_err(io_at(&self.dir))?;
        }
        self.segments.push_back(Segment {
            first: self.next_seq,
            count: 0,
            bytes: 0,
        });
        self.writer = Some(file);
        self.tail_open = true;
        Ok(())
    }

    /// Writes one framed record at the end of the open tail; on failure cuts the partial record
    /// off again (or, failing that, closes the tail).
    fn write_record(&mut self, frame: &[u8]) -> Result<(), BufferError> {
        let seg = match self.segments.back() {
            Some(s) if self.tail_open => *s,
            _ => {
                return Err(BufferError::Io {
                    path: self.dir.clone(),
                    source: io::Error::other("no open segment to append to"),
                });
            }
        };
        let path = segment_path(&self.dir, seg.first);
        if self.writer.is_none() {
            match OpenOptions::new().write(true).open(&path) {
                Ok(file) => self.writer = Some(file),
                Err(e) => {
                    self.tail_open = false;
                    return Err(io_at(&path)(e));
                }
            }
        }
        let Some(file) = self.writer.as_mut() else {
            return Err(io_at(&path)(io::Error::other("segment not open")));
        };
        let always = self.limits.sync == SyncPolicy::Always;
        let result = file
            .seek(SeekFrom::Start(seg.bytes))
            .and_then(|_| self.hooks.write_all(file, frame))
            .and_then(|()| if always { file.sync_data() } else { Ok(()) });
        match result {
            Ok(()) => {
                if let Some(s) = self.segments.back_mut() {
                    s.count += 1;
                    s.bytes += frame.len() as u64;
                }
                self.next_seq += 1;
                if !always {
                    self.unsynced = self.unsynced.saturating_add(1);
                }
                if let SyncPolicy::EveryN(n) = self.limits.sync
                    && self.unsynced >= n
                {
                    match file.sync_data() {
                        Ok(()) => self.unsynced = 0,
                        Err(e) => {
                            tracing::warn!(path = %path.display(), error = %e, "could not fsync the buffer; will retry");
                        }
                    }
                }
                Ok(())
            }
            Err(source) => {
                let restored = self
                    .hooks
                    .truncate(file, seg.bytes)
                    .and_then(|()| file.seek(SeekFrom::Start(seg.bytes)))
                    .is_ok();
                if !restored {
                    tracing::warn!(path = %path.display(), "could not cut a partial record off the buffer; continuing in a new segment");
                    self.writer = None;
                    self.tail_open = false;
                    self.unsynced = 0;
                }
                Err(BufferError::Io { path, source })
            }
        }
    }

    /// The best known position to start reading `seq` in `seg` from.
    fn cursor_for(&self, seg: &Segment, seq: u64) -> (u64, u64) {
        self.cursors
            .iter()
            .flatten()
            .filter(|c| c.seq >= seg.first && c.seq <= seq && c.seq < seg.end())
            .max_by_key(|c| c.seq)
            .map_or((seg.first, 0), |c| (c.seq, c.offset))
    }

    /// Corruption found while reading: the records of segment `idx` from `at` on are lost.
    fn lose_rest(&mut self, idx: usize, at: u64, why: &str) {
        let is_tail = self.tail_index() == Some(idx);
        let Some(s) = self.segments.get_mut(idx) else {
            return;
        };
        let lost = s.end().saturating_sub(at);
        s.count = at.saturating_sub(s.first).min(s.count);
        let path = segment_path(&self.dir, s.first);
        if is_tail {
            self.writer = None;
            self.tail_open = false;
            self.unsynced = 0;
        }
        self.cursors = [None; 2];
        tracing::warn!(path = %path.display(), lost, "buffer segment damaged: {why}; skipping the rest of it");
        self.normalize_head();
    }
}

/// Test seams for the write path; empty outside tests.
#[derive(Debug, Default)]
struct Hooks {
    /// Bytes that may still be written before writes fail with `ENOSPC`.
    #[cfg(test)]
    write_budget: Option<u64>,
    /// Make cutting a partial record off fail.
    #[cfg(test)]
    fail_truncate: bool,
}

impl Hooks {
    fn write_all(&mut self, file: &mut File, bytes: &[u8]) -> io::Result<()> {
        #[cfg(test)]
        if let Some(budget) = self.write_budget {
            let len = bytes.len() as u64;
            if len > budget {
                let n = usize::try_from(budget).unwrap_or(0).min(bytes.len());
                file.write_all(bytes.get(..n).unwrap_or_default())?;
                self.write_budget = Some(0);
                return Err(io::Error::from_raw_os_error(28)); // ENOSPC
            }
            self.write_budget = Some(budget - len);
        }
        file.write_all(bytes)
    }

    fn truncate(&mut self, file: &File, len: u64) -> io::Result<()> {
        #[cfg(test)]
        if self.fail_truncate {
            return Err(io::Error::other("injected truncate failure"));
        }
        file.set_len(len)
    }
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> BufferError + '_ {
    move |source| BufferError::Io {
        path: path.to_owned(),
        source,
    }
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}{SEGMENT_EXT}"))
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_EXT)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The first sequence numbers of the segment files in `dir` (unsorted).
fn list_segments(dir: &Path) -> Result<Vec<u64>, BufferError> {
    let mut firsts = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_at(dir))? {
        let entry = entry.map_err(io_at(dir))?;
        let is_file = entry.file_type().map_err(io_at(&entry.path()))?.is_file();
        if let (true, Some(first)) = (
            is_file,
            entry.file_name().to_str().and_then(parse_segment_name),
        ) {
            firsts.push(first);
        }
    }
    Ok(firsts)
}

fn remove_file(path: &Path) -> Result<(), BufferError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_at(path)(e)),
        _ => Ok(()),
    }
}

fn truncate_file(path: &Path, len: u64, sync: bool) -> Result<(), BufferError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_at(path))?;
    file.set_len(len).map_err(io_at(path))?;
    if sync {
        file.sync_all().map_err(io_at(path))?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

enum HeadRead {
    Missing,
    Corrupt(String),
    Valid { head: u64, dropped: u64 },
}

fn read_head(path: &Path) -> Result<HeadRead, BufferError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(HeadRead::Missing),
        Err(e) => return Err(io_at(path)(e)),
    };
    let mut bytes = Vec::with_capacity(HEAD_LEN + 1);
    file.take(HEAD_LEN as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io_at(path))?;
    Ok(match decode_head(&bytes) {
        Ok((head, dropped)) => HeadRead::Valid { head, dropped },
        Err(reason) => HeadRead::Corrupt(reason),
    })
}

fn encode_head(head: u64, dropped: u64) -> [u8; HEAD_LEN] {
    let mut b = [0u8; HEAD_LEN];
    b[..4].copy_from_slice(&HEAD_MAGIC);
    b[4..12].copy_from_slice(&head.to_le_bytes());
    b[12..20].copy_from_slice(&dropped.to_le_bytes());
    let crc = crc32(&b[..20]);
    b[20..].copy_from_slice(&crc.to_le_bytes());
    b
}

fn decode_head(bytes: &[u8]) -> Result<(u64, u64), String> {
    let Ok(b) = <[u8; HEAD_LEN]>::try_from(bytes) else {
        return Err(format!(
            "{} byte(s) where {HEAD_LEN} were expected",
            bytes.len()
        ));
    };
    if b[..4] != HEAD_MAGIC {
        return Err("not a buffer head file".to_owned());
    }
    let crc = u32::from_le_bytes([b[20], b[21], b[22], b[23]]);
    if crc != crc32(&b[..20]) {
        return Err("checksum mismatch".to_owned());
    }
    let head = u64::from_le_bytes([b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11]]);
    let dropped = u64::from_le_bytes([b[12], b[13], b[14], b[15], b[16], b[17], b[18], b[19]]);
    Ok((head, dropped))
}

/// The framed record; the caller checked that it fits the limits (and so a u32).
fn encode_record(seq: u64, suffix: &str, payload: &[u8]) -> Vec<u8> {
    let body_len = BODY_FIXED as usize + suffix.len() + payload.len();
    let mut v = Vec::with_capacity(HEADER_LEN as usize + body_len);
    v.extend_from_slice(&[MAGIC, VERSION]);
    v.extend_from_slice(&u32::try_from(body_len).unwrap_or(u32::MAX).to_le_bytes());
    v.extend_from_slice(&[0; 4]);
    v.extend_from_slice(&seq.to_le_bytes());
    v.push(u8::try_from(suffix.len()).unwrap_or(u8::MAX));
    v.extend_from_slice(suffix.as_bytes());
    v.extend_from_slice(payload);
    let crc = crc32(&v[HEADER_LEN as usize..]);
    v[6..10].copy_from_slice(&crc.to_le_bytes());
    v
}

/// Reads and checks one record expected to carry `expected_seq`, with at most `remaining` bytes
/// left in the valid part of the file. `Ok(Ok((framed length, record)))` for a good record (the
/// record itself only when `keep`; otherwise the body is streamed through the CRC, so nothing is
/// allocated), `Ok(Err(problem))` for a damaged one, `Err` for an I/O error.
fn read_frame<R: Read>(
    r: &mut R,
    remaining: u64,
    expected_seq: u64,
    keep: bool,
) -> io::Result<Result<(u64, Option<Record>), String>> {
    if remaining < FIXED_LEN as u64 {
        return Ok(Err(format!("short record ({remaining} byte(s) left)")));
    }
    let mut fixed = [0u8; FIXED_LEN];
    if let Err(e) = r.read_exact(&mut fixed) {
        return short_read(e);
    }
    if fixed[0] != MAGIC || fixed[1] != VERSION {
        return Ok(Err(format!(
            "bad record header {:02x}{:02x}",
            fixed[0], fixed[1]
        )));
    }
    let len = u64::from(u32::from_le_bytes([fixed[2], fixed[3], fixed[4], fixed[5]]));
    if !(BODY_FIXED..=MAX_RECORD_LIMIT).contains(&len) || HEADER_LEN + len > remaining {
        return Ok(Err(format!("bad record length {len}")));
    }
    let want_crc = u32::from_le_bytes([fixed[6], fixed[7], fixed[8], fixed[9]]);
    let seq = u64::from_le_bytes([
        fixed[10], fixed[11], fixed[12], fixed[13], fixed[14], fixed[15], fixed[16], fixed[17],
    ]);
    let suffix_len = usize::from(fixed[18]);
    let Some(payload_len) = (len - BODY_FIXED).checked_sub(suffix_len as u64) else {
        return Ok(Err(format!("bad suffix length {suffix_len}")));
    };
    let mut crc = Crc32::new();
    crc.update(&fixed[HEADER_LEN as usize..]);
    let mut suffix = [0u8; 255];
    let suffix = &mut suffix[..suffix_len];
    if let Err(e) = r.read_exact(suffix) {
        return short_read(e);
    }
    crc.update(suffix);
    let payload = if keep {
        let mut payload = vec![0u8; usize::try_from(payload_len).unwrap_or(0)];
        if let Err(e) = r.read_exact(&mut payload) {
            return short_read(e);
        }
        crc.update(&payload);
        Some(payload)
    } else {
        let mut chunk = [0u8; 4096];
        let mut left = payload_len;
        while left > 0 {
            let n = usize::try_from(left.min(chunk.len() as u64)).unwrap_or(chunk.len());
            let chunk = &mut chunk[..n];
            if let Err(e) = r.read_exact(chunk) {
                return short_read(e);
            }
            crc.update(chunk);
            left -= n as u64;
        }
        None
    };
    if crc.finish() != want_crc {
        return Ok(Err("checksum mismatch".to_owned()));
    }
    if seq != expected_seq {
        return Ok(Err(format!(
            "sequence number {seq} where {expected_seq} was expected"
        )));
    }
    let Ok(suffix) = std::str::from_utf8(suffix) else {
        return Ok(Err("topic suffix is not UTF-8".to_owned()));
    };
    let record = payload.map(|payload| Record {
        seq,
        suffix: suffix.to_owned(),
        payload,
    });
    Ok(Ok((HEADER_LEN + len, record)))
}

fn short_read<T>(e: io::Error) -> io::Result<Result<T, String>> {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        Ok(Err("short read".to_owned()))
    } else {
        Err(e)
    }
}

/// What scanning a segment file found.
struct Scan {
    count: u64,
    valid_bytes: u64,
    file_len: u64,
    problem: Option<String>,
}

fn scan_segment(path: &Path, first: u64) -> Result<Scan, BufferError> {
    let file = File::open(path).map_err(io_at(path))?;
    let file_len = file.metadata().map_err(io_at(path))?.len();
    let mut reader = BufReader::new(file);
    let mut scan = Scan {
        count: 0,
        valid_bytes: 0,
        file_len,
        problem: None,
    };
    while scan.valid_bytes < file_len {
        let expected = match first.checked_add(scan.count) {
            Some(seq) if seq < u64::MAX - 1 => seq,
            _ => {
                scan.problem = Some("sequence numbers out of range".to_owned());
                break;
            }
        };
        let remaining = file_len - scan.valid_bytes;
        match read_frame(&mut reader, remaining, expected, false).map_err(io_at(path))? {
            Ok((len, _)) => {
                scan.valid_bytes += len;
                scan.count += 1;
            }
            Err(problem) => {
                scan.problem = Some(problem);
                break;
            }
        }
    }
    Ok(scan)
}

/// CRC-32 (IEEE 802.3, reflected, as in zlib), with a table built at compile time.
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

struct Crc32(u32);

impl Crc32 {
    fn new() -> Self {
        Crc32(0xFFFF_FFFF)
    }

    fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = CRC_TABLE[((self.0 ^ u32::from(b)) & 0xFF) as usize] ^ (self.0 >> 8);
        }
    }

    fn finish(&self) -> u32 {
        !self.0
    }
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = Crc32::new();
    crc.update(bytes);
    crc.finish()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::collections::VecDeque;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// Framed size of the records made by `rec`: 19 + 1 ("t") + 30.
    const REC: u64 = 50;

    /// Segments of four `REC` records, three segments at most.
    fn small() -> Limits {
        Limits {
            max_bytes: 600,
            segment_bytes: 200,
            max_record_bytes: 200,
            sync: SyncPolicy::Never,
            head_write_every: 1000,
        }
    }

    fn roomy_records() -> Limits {
        Limits {
            max_record_bytes: 1024,
            segment_bytes: 1024,
            ..roomy()
        }
    }

    fn roomy() -> Limits {
        Limits {
            max_bytes: 1 << 20,
            ..small()
        }
    }

    /// A 30-byte payload naming `i`.
    fn payload(i: u64) -> Vec<u8> {
        format!("{i:030}").into_bytes()
    }

    fn open(dir: &Path, limits: Limits) -> (Buffer, OpenReport) {
        Buffer::open(dir, limits).unwrap()
    }

    fn fill(b: &mut Buffer, n: u64) {
        for _ in 0..n {
            let seq = b.next_seq();
            assert_eq!(b.append("t", &payload(seq)).unwrap().seq, seq);
        }
    }

    fn seqs(b: &mut Buffer) -> Vec<u64> {
        let records = b.peek(usize::MAX).unwrap();
        for r in &records {
            assert_eq!(r.payload, payload(r.seq), "record {} damaged", r.seq);
        }
        records.iter().map(|r| r.seq).collect()
    }

    fn segment_files(dir: &Path) -> Vec<u64> {
        let mut v = list_segments(dir).unwrap();
        v.sort_unstable();
        v
    }

    fn flip(path: &Path, at: u64) {
        let mut bytes = fs::read(path).unwrap();
        bytes[at as usize] ^= 0xFF;
        fs::write(path, bytes).unwrap();
    }

    fn copy_dir(from: &Path, to: &Path) {
        for entry in fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn buffer_is_send() {
        fn send<T: Send>() {}
        send::<Buffer>();
        // Small enough for a thousand buffers in one process (plus ~24 bytes per segment).
        assert!(size_of::<Buffer>() <= 256, "{}", size_of::<Buffer>());
    }

    #[test]
    fn records_round_trip_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (mut b, report) = open(dir.path(), Limits::default());
        assert!(report.is_clean(), "{report:?}");
        assert!(b.is_empty());
        assert_eq!(b.peek(10).unwrap(), vec![]);
        let records = [
            ("telemetry", b"{\"cpu\":1}".to_vec()),
            ("events", vec![]),
            ("", vec![0, 255, 7]),
            ("télémétrie", vec![42; 1000]),
        ];
        for (i, (suffix, payload)) in records.iter().enumerate() {
            let out = b.append(suffix, payload).unwrap();
            assert_eq!(
                out,
                AppendOutcome {
                    seq: i as u64 + 1,
                    dropped: 0
                }
            );
        }
        assert_eq!(b.len(), 4);
        let framed: u64 = records
            .iter()
            .map(|(s, p)| RECORD_OVERHEAD + s.len() as u64 + p.len() as u64)
            .sum();
        assert_eq!(b.bytes(), framed);
        let got = b.peek(2).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].suffix, "telemetry");
        assert_eq!(got[1].seq, 2);
        let all = b.peek(100).unwrap();
        assert_eq!(all.len(), 4);
        for (r, (suffix, payload)) in all.iter().zip(&records) {
            assert_eq!((&r.suffix[..], &r.payload), (*suffix, payload));
        }
        assert_eq!(b.peek(0).unwrap(), vec![]);
        // Peeking removes nothing; reopening keeps everything.
        drop(b);
        let (mut b, report) = open(dir.path(), Limits::default());
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(b.peek(100).unwrap(), all);
    }

    #[test]
    fn acks_move_the_head_and_persist_on_flush() {
        let dir = tempfile::tempdir().unwrap();
        let (mut b, _) = open(dir.path(), roomy());
        fill(&mut b, 5);
        b.ack(3).unwrap();
        assert_eq!((b.head_seq(), b.len()), (4, 2));
        assert_eq!(seqs(&mut b), [4, 5]);
        b.ack(1).unwrap(); // stale
        assert_eq!(b.head_seq(), 4);
        b.flush_head().unwrap();
        drop(b);
        let (mut b, report) = open(dir.path(), roomy());
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(seqs(&mut b), [4, 5]);
        // Acking past the end acknowledges what there is.
        b.ack(1000).unwrap();
        assert!(b.is_empty());
        assert_eq!(b.head_seq(), 6);
        b.flush().unwrap();
        drop(b);
        let (mut b, _) = open(dir.path(), roomy());
        assert!(b.is_empty());
        assert_eq!(b.append("t", &payload(6)).unwrap().seq, 6);
        assert_eq!(seqs(&mut b), [6]);
        assert_eq!(b.dropped_total(), 0);
    }

    #[test]
    fn reopening_without_a_persisted_ack_redelivers() {
        let dir = tempfile::tempdir().unwrap();
        let (mut b, _) = open(dir.path(), roomy());
        fill(&mut b, 5);
        assert_eq!(seqs(&mut b), [1, 2, 3, 4, 5]);
        b.ack(2).unwrap(); // not persisted: head_write_every is 1000
        drop(b); // as after kill -9
        let (mut b, report) = open(dir.path(), roomy());
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(seqs(&mut b), [1, 2, 3, 4, 5]);
        assert_eq!(b.next_seq(), 6);
    }

    #[test]
    fn the_head_is_written_every_n_acks() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            head_write_every: 2,
            ..roomy()
        };
        let (mut b, _) = open(dir.path(), limits);
        fill(&mut b, 5);
        b.ack(1).unwrap();
        b.ack(2).unwrap(); // second ack: written
        b.ack(3).unwrap(); // not written
        drop(b);
        let (mut b, _) = open(dir.path(), limits);
        assert_eq!(seqs(&mut b), [3, 4, 5]);
    }

    #[test]
    fn full_buffer_drops_the_oldest_segments_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let (mut b, _) = open(dir.path(), small());
        fill(&mut b, 12); // three full segments: 600 bytes
        assert_eq!(b.bytes(), 600);
        assert_eq!(segment_files(dir.path()), [1, 5, 9]);
        let out = b.append("t", &payload(13)).unwrap();
        assert_eq!(
            out,
            AppendOutcome {
                seq: 13,
                dropped: 4
            }
        );
        assert_eq!(segment_files(dir.path()), [5, 9, 13]);
        assert_eq!((b.dropped_total(), b.head_seq(), b.len()), (4, 5, 9));
        // Two of the next segment's records are acknowledged: only two more are lost.
        b.ack(6).unwrap();
        fill(&mut b, 3);
        let out = b.append("t", &payload(17)).unwrap();
        assert_eq!(
            out,
            AppendOutcome {
                seq: 17,
                dropped: 2
            }
        );
        assert_eq!(b.dropped_total(), 6);
        assert!(b.bytes() <= 600);
        assert_eq!(seqs(&mut b), (9..=17).collect::<Vec<_>>());
        // The count survives a restart, even without a flush.
        drop(b);
        let (mut b, report) = open(dir.path(), small());
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(b.dropped_total(), 6);
        assert_eq!(seqs(&mut b), (9..=17).collect::<Vec<_>>());
    }

    #[test]
    fn a_single_segment_buffer_drops_its_only_segment() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_bytes: 200,
            ..small()
        };
        let (mut b, _) = open(dir.path(), limits);
        fill(&mut b, 4);
        let out = b.append("t", &payload(5)).unwrap();
        assert_eq!(out.dropped, 4);
        assert_eq!(segment_files(dir.path()), [5]);
        assert_eq!(seqs(&mut b), [5]);
    }

    #[test]
    fn segments_roll_and_acknowledged_ones_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let (mut b, _) = open(dir.path(), roomy());
        fill(&mut b, 10);
        assert_eq!(segment_files(dir.path()), [1, 5, 9]);
        assert_eq!(b.bytes(), 500);
        b.ack(3).unwrap();
        assert_eq!(segment_files(dir.path()), [1, 5, 9]);
        b.ack(4).unwrap();
        assert_eq!(segment_files(dir.path()), [5, 9]);
        b.ack(10).unwrap();
        // The segment being written stays, even when fully acknowledged.
        assert_eq!(segment_files(dir.path()), [9]);
        assert_eq!(b.bytes(), 100);
        fill(&mut b, 3);
        assert_eq!(segment_files(dir.path()), [9, 13]);
        b.ack(12).unwrap();
        assert_eq!(segment_files(dir.path()), [13]);
        // A deletion persisted the head first, so a restart neither redelivers nor counts drops.
        drop(b);
        let (mut b, report) = open(dir.path(), roomy());
        assert!(report.is_clean(), "{report:?}");
        assert_eq!((seqs(&mut b), b.dropped_total()), (vec![13], 0));
    }

    #[test]
    fn oversized_records_and_bad_limits_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (mut b, _) = open(dir.path(), small());
        let err = b.append("t", &[0; 181]).unwrap_err();
        assert!(
            matches!(
                err,
                BufferError::RecordTooLarge {
                    size: 201,
                    max: 200
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("201 bytes"), "{err}");
        b.append("t", &[0; 180]).unwrap(); // exactly 200
        let err = b.append(&"x".repeat(256), b"").unwrap_err();
        assert!(
            matches!(err, BufferError::SuffixTooLong { len: 256 }),
            "{err}"
        );
        assert_eq!(b.len(), 1);
        let (mut b, _) = open(dir.path(), roomy_records());
        b.append(&"x".repeat(255), b"").unwrap();
        assert_eq!(b.len(), 2);

        for bad in [
            Limits {
                max_record_bytes: 10,
                ..small()
            },
            Limits {
                segment_bytes: 100,
                ..small()
            },
            Limits {
                max_bytes: 100,
                ..small()
            },
            Limits {
                head_write_every: 0,
                ..small()
            },
            Limits {
                sync: SyncPolicy::EveryN(0),
                ..small()
            },
            Limits {
                max_record_bytes: MAX_RECORD_LIMIT + 1,
                segment_bytes: 1 << 30,
                max_bytes: 1 << 30,
                ..small()
            },
        ] {
            let err = Buffer::open(dir.path(), bad).unwrap_err();
            assert!(matches!(err, BufferError::InvalidLimits(_)), "{err}");
        }
    }

    #[test]
    fn a_torn_tail_is_cut_at_every_offset() {
        let src = tempfile::tempdir().unwrap();
        let (mut b, _) = open(src.path(), roomy());
        fill(&mut b, 4); // one segment, 200 bytes
        b.flush().unwrap();
        drop(b);
        let seg = segment_path(src.path(), 1);
        let whole = fs::read(&seg).unwrap();
        let last = 3 * REC;
        for cut in last..whole.len() as u64 {
            let dir = tempfile::tempdir().unwrap();
            copy_dir(src.path(), dir.path());
            fs::write(segment_path(dir.path(), 1), &whole[..cut as usize]).unwrap();
            let (mut b, report) = open(dir.path(), roomy());
            assert_eq!(seqs(&mut b), [1, 2, 3], "cut at {cut}");
            assert_eq!(report.truncated_bytes, cut - last, "cut at {cut}");
            if cut > last {
                assert_eq!(report.corrupt_records_skipped, 1);
                assert!(report.messages[0].contains("cut"), "{report:?}");
            } else {
                assert!(report.is_clean(), "{report:?}");
            }
            assert_eq!(b.dropped_total(), 0);
            // Appending carries on where the good records end.
            assert_eq!(b.append("t", &payload(4)).unwrap().seq, 4);
            drop(b);
            let (mut b, report) = open(dir.path(), roomy());
            assert!(report.is_clean(), "{report:?}");
            assert_eq!(seqs(&mut b), [1, 2, 3, 4]);
        }
    }

    #[test]
    fn any_damaged_byte_of_the_last_record_cuts_only_that_record() {
        let src = tempfile::tempdir().unwrap();
        let (mut b, _) = open(src.path(), roomy());
        fill(&mut b, 4);
        drop(b);
        for at in 3 * REC..4 * REC {
            let dir = tempfile::tempdir().unwrap();
            copy_dir(src.path(), dir.path());
            flip(&segment_path(dir.path(), 1), at);
            let (mut b, report) = open(dir.path(), roomy());
            assert_eq!(seqs(&mut b), [1, 2, 3], "byte {at}");
            assert_eq!(report.truncated_bytes, REC, "byte {at}");
        }
    }

    #[test]
    fn damage_in_an_older_segment_skips_its_rest_and_counts_it_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (mut b, _) = open(dir.path(), roomy());
        fill(&mut b, 10); // segments 1-4, 5-8, 9-10
        drop(b);
        flip(&segment_path(dir.path(), 1), REC + 25); // record 2's payload
        let (mut b, report) = open(dir.path(), roomy());
        assert_eq!(report.corrupt_records_skipped, 3, "{report:?}");
        assert_eq!(report.truncated_bytes, 3 * REC);
        assert!(report.messages[0].contains("checksum"), "{report:?}");
        assert_eq!(seqs(&mut b), [1, 5, 6, 7, 8, 9, 10]);
        assert_eq!((b.len(), b.dropped_total()), (7, 3));
        // Reopening reports nothing new and counts nothing twice, before and after the head
        // passes the gap (which deletes the damaged segment, persisting the head first).
        drop(b);
        let (mut b, report) = open(dir.path(), roomy());
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(b.dropped_total(), 3);
        b.ack(5).unwrap();
        assert_eq!((b.head_seq(), b.dropped_total()), (6, 3));
        assert_eq!(segment_files(dir.path()), [5, 9]);
        drop(b);
        let (mut b, _) = open(dir.path(), roomy());
        assert_eq!((b.head_seq(), b.dropped_total()), (6, 3));
        assert_eq!(seqs(&mut b), [6, 7, 8, 9, 10]);
    }

    #[test]
    fn damage_found_by_peek_is_skipped_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let (mut b, _) = open(dir.path(), roomy());
        fill(&mut b, 10);
        assert_eq!(b.peek(1).unwrap()[0].seq, 1);
        flip(&segment_path(dir.path(), 5), 2 * REC + 30); // record 7
        flip(&segment_path(dir.path(), 9), REC + 3); // record 10, in the segment being written
        assert_eq!(seqs(&mut b), [1, 2, 3, 4, 5, 6, 9]);
        assert_eq!(b.dropped_total(), 3);
        b.ack(6).unwrap();
        assert_eq!((b.head_seq(), b.len()), (9, 1));
        // The damaged segment being written is closed; appends go to a new one. (Segment 5,
        // acknowledged as far as it goes, is gone.)
        assert_eq!(b.append("t", &payload(11)).unwrap().seq, 11);
        assert_eq!(segment_files(dir.path()), [9, 11]);
        assert_eq!(seqs(&mut b), [9, 11]);
        assert_eq!(b.dropped_total(), 3);
        // A segment file deleted behind the buffer's back is lost, not fatal.
        fs::remove_file(segment_path(dir.path(), 9)).unwrap();
        assert_eq!(seqs(&mut b), [11]);
        assert_eq!(b.dropped_total(), 4);
    }

    #[test]
    fn a_garbage_or_missing_head_file_restarts_at_the_oldest_record() {
        let dir = tempfile::tempdir().unwrap();
        let (mut b, _) = open(dir.path(), roomy());
        fill(&mut b, 6);
        b.ack(5).unwrap();
        b.flush_head().unwrap();
        drop(b);
        let head = dir.path().join(HEAD_FILE);
        for garbage in [&b"garbage"[..], &[0; HEAD_LEN], &[0xFF; 4096], b""] {
            fs::write(&head, garbage).unwrap();
            let (mut b, report) = open(dir.path(), roomy());
            assert!(report.head_reset, "{report:?}");
            assert!(report.messages[0].contains("head"), "{report:?}");
            assert_eq!(seqs(&mut b), [5, 6]); // segment 1-4 was deleted after the ack
        }
        // A flipped bit fails the checksum.
        let (b, _) = open(dir.path(), roomy());
        drop(b);
        flip(&head, 5);
        let (_, report) = open(dir.path(), roomy());
        assert!(report.messages[0].contains("checksum"), "{report:?}");
        fs::remove_file(&head).unwrap();
        let (mut b, report) = open(dir.path(), roomy());
        assert!(
            report.head_reset && report.messages[0].contains("missing"),
            "{report:?}"
        );
        assert_eq!(seqs(&mut b), [5, 6]);
        // After a repair the head file is back.
        drop(b);
        let (_, report) = open(dir.path(), roomy());
        assert!(report.is_clean(), "{report:?}");
    }

    #[test]
    fn a_head_beyond_the_records_starts_there() {
        let dir = tempfile::tempdir().unwrap();
        let (mut b, _) = open(dir.path(), roomy());
        fill(&mut b, 3);
        drop(b);
        fs::write(dir.path().join(HEAD_FILE), encode_head(100, 7)).unwrap();
        let (mut b, _) = open(dir.path(), roomy());
        assert!(b.is_empty());
        assert_eq!(b.dropped_total(), 7);
        assert_eq!(segment_files(dir.path()), Vec::<u64>::new());
        assert_eq!(b.append("t", &payload(100)).unwrap().seq, 100);
        drop(b);
        let (mut b, _) = open(dir.path(), roomy());
        assert_eq!(seqs(&mut b), [100]);
    }

    #[test]
    fn empty_garbage_and_unknown_files() {
        // An empty segment file: used as is.
        let dir = tempfile::tempdir().unwrap();
        fs::write(segment_path(dir.path(), 1), b"").unwrap();
        let (mut b, report) = open(dir.path(), roomy());
        assert!(
            !report.head_reset && report.truncated_bytes == 0,
            "{report:?}"
        );
        fill(&mut b, 2);
        assert_eq!(segment_files(dir.path()), [1]);
        drop(b);

        // A garbage segment as the only one: cut to nothing.
        let dir = tempfile::tempdir().unwrap();
        let mut rng = StdRng::seed_from_u64(7);
        let mut garbage = vec![0u8; 3000];
        rng.fill(&mut garbage[..]);
        fs::write(segment_path(dir.path(), 1), &garbage).unwrap();
        let (mut b, report) = open(dir.path(), roomy());
        assert_eq!(report.truncated_bytes, 3000);
        assert!(b.is_empty());
        fill(&mut b, 1);
        assert_eq!(seqs(&mut b), [1]);

        // An older segment overwritten with garbage: its records are lost, the rest is kept.
        let dir = tempfile::tempdir().unwrap();
        let (mut b, _) = open(dir.path(), roomy());
        fill(&mut b, 6);
        drop(b);
        fs::write(segment_path(dir.path(), 1), &garbage[..200]).unwrap();
        let (mut b, report) = open(dir.path(), roomy());
        assert_eq!(report.corrupt_records_skipped, 4, "{report:?}");
        assert_eq!(segment_files(dir.path()), [5]);
        assert_eq!((seqs(&mut b), b.dropped_total()), (vec![5, 6], 4));

        // Files that are not ours are left alone; a stale temporary head is removed.
        fs::write(dir.path().join("notes.txt"), b"hello").unwrap();
        fs::write(dir.path().join("123.seg"), b"not a segment").unwrap();
        fs::write(dir.path().join("0000000000000000000x.seg"), b"nor this").unwrap();
        fs::create_dir(segment_path(dir.path(), 50)).unwrap();
        fs::write(dir.path().join(HEAD_TMP), b"half").unwrap();
        drop(b);
        let (mut b, report) = open(dir.path(), roomy());
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(seqs(&mut b), [5, 6]);
        fill(&mut b, 1);
        assert!(dir.path().join("notes.txt").exists());
        assert!(dir.path().join("123.seg").exists());
        assert!(!dir.path().join(HEAD_TMP).exists());
    }

    #[test]
    fn enospc_mid_record_leaves_the_buffer_consistent() {
        for budget in [0, 5, 12, 19, 30, 49] {
            let dir = tempfile::tempdir().unwrap();
            let limits = Limits {
                sync: SyncPolicy::Always,
                ..roomy()
            };
            let (mut b, _) = open(dir.path(), limits);
            fill(&mut b, 3);
            b.hooks.write_budget = Some(budget);
            let err = b.append("t", &payload(4)).unwrap_err();
            let BufferError::Io { path, source } = &err else {
                panic!("{err}");
            };
            assert_eq!(source.kind(), io::ErrorKind::StorageFull);
            assert_eq!(path, &segment_path(dir.path(), 1));
            assert!(
                err.to_string().contains("00000000000000000001.seg"),
                "{err}"
            );
            // Still full: fails again, nothing is half-written.
            assert!(b.append("t", &payload(4)).is_err());
            assert_eq!((b.len(), b.next_seq()), (3, 4));
            assert_eq!(
                fs::metadata(segment_path(dir.path(), 1)).unwrap().len(),
                3 * REC
            );
            // Reopening at this point (a crash) finds the earlier records intact.
            {
                let copy = tempfile::tempdir().unwrap();
                copy_dir(dir.path(), copy.path());
                let (mut c, report) = open(copy.path(), limits);
                assert!(report.is_clean(), "{report:?}");
                assert_eq!(seqs(&mut c), [1, 2, 3]);
            }
            // Space is back.
            b.hooks.write_budget = None;
            assert_eq!(b.append("t", &payload(4)).unwrap().seq, 4);
            assert_eq!(seqs(&mut b), [1, 2, 3, 4]);
            drop(b);
            let (mut b, report) = open(dir.path(), limits);
            assert!(report.is_clean(), "{report:?}");
            assert_eq!(seqs(&mut b), [1, 2, 3, 4]);
        }
    }

    #[test]
    fn enospc_when_the_partial_record_cannot_be_cut_moves_to_a_new_segment() {
        let dir = tempfile::tempdir().unwrap();
        let (mut b, _) = open(dir.path(), roomy());
        fill(&mut b, 2);
        b.hooks.write_budget = Some(20);
        b.hooks.fail_truncate = true;
        assert!(b.append("t", &payload(3)).is_err());
        assert_eq!(
            fs::metadata(segment_path(dir.path(), 1)).unwrap().len(),
            2 * REC + 20
        );
        b.hooks = Hooks::default();
        assert_eq!(b.append("t", &payload(3)).unwrap().seq, 3);
        assert_eq!(segment_files(dir.path()), [1, 3]);
        assert_eq!(seqs(&mut b), [1, 2, 3]);
        drop(b);
        // The partial record is cut at the next open; no record is lost or counted dropped.
        let (mut b, report) = open(dir.path(), roomy());
        assert_eq!(
            (report.truncated_bytes, report.corrupt_records_skipped),
            (20, 0),
            "{report:?}"
        );
        assert_eq!((seqs(&mut b), b.dropped_total()), (vec![1, 2, 3], 0));
    }

    #[test]
    fn every_n_and_never_sync_policies_keep_records_across_a_restart() {
        for sync in [SyncPolicy::EveryN(3), SyncPolicy::Never] {
            let dir = tempfile::tempdir().unwrap();
            let limits = Limits { sync, ..roomy() };
            let (mut b, _) = open(dir.path(), limits);
            fill(&mut b, 7);
            drop(b); // kill -9: the page cache keeps what was written
            let (mut b, _) = open(dir.path(), limits);
            assert_eq!(seqs(&mut b), (1..=7).collect::<Vec<_>>());
            fill(&mut b, 1);
            b.flush().unwrap();
        }
    }

    /// Random damage to the files: opening, reading, acking and appending never fail or panic,
    /// and whatever is read is what was written, in order.
    #[test]
    fn damaged_files_never_break_the_buffer() {
        let src = tempfile::tempdir().unwrap();
        let (mut b, _) = open(src.path(), roomy());
        fill(&mut b, 14);
        b.ack(2).unwrap();
        b.flush().unwrap();
        drop(b);
        let names: Vec<PathBuf> = fs::read_dir(src.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into())
            .collect();
        let mut rng = StdRng::seed_from_u64(1);
        for round in 0..300 {
            let dir = tempfile::tempdir().unwrap();
            copy_dir(src.path(), dir.path());
            for _ in 0..rng.random_range(1..=3) {
                let path = dir.path().join(&names[rng.random_range(0..names.len())]);
                let mut bytes = fs::read(&path).unwrap_or_default();
                match rng.random_range(0..6) {
                    0 if !bytes.is_empty() => {
                        let at = rng.random_range(0..bytes.len());
                        bytes[at] ^= 1 << rng.random_range(0..8);
                    }
                    1 => bytes.truncate(rng.random_range(0..=bytes.len())),
                    2 => {
                        let mut tail = vec![0u8; rng.random_range(1..100)];
                        rng.fill(&mut tail[..]);
                        bytes.extend(tail);
                    }
                    3 if !bytes.is_empty() => {
                        let at = rng.random_range(0..bytes.len());
                        let end = (at + rng.random_range(1..64)).min(bytes.len());
                        bytes[at..end].fill(0);
                    }
                    4 if bytes.len() > 10 => {
                        // A plausible but huge length field.
                        let at = rng.random_range(0..bytes.len() - 4);
                        bytes[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
                    }
                    _ => {
                        let _ = fs::remove_file(&path);
                        continue;
                    }
                }
                fs::write(&path, bytes).unwrap();
            }
            let (mut b, _) =
                Buffer::open(dir.path(), roomy()).unwrap_or_else(|e| panic!("round {round}: {e}"));
            let got = seqs(&mut b);
            assert!(
                got.windows(2).all(|w| w[0] < w[1]),
                "round {round}: {got:?}"
            );
            assert!(got.iter().all(|&s| s <= 14), "round {round}: {got:?}");
            assert_eq!(got.len() as u64, b.len());
            b.ack(b.next_seq()).unwrap();
            assert!(b.is_empty());
            let seq = b.next_seq();
            b.append("t", &payload(seq)).unwrap();
            drop(b);
            let (mut b, _) = open(dir.path(), roomy());
            assert_eq!(seqs(&mut b), [seq], "round {round}");
        }
    }

    /// One model-checking run: random appends, peeks, acks, flushes and restarts against a
    /// `VecDeque`. Without damage, the buffer must deliver exactly the model's records, drop only
    /// from the front (counting exactly), and after a restart resume no later than the last ack
    /// and no earlier than the last flush.
    /// Returns the records dropped and the restarts done.
    fn model_run(seed: u64, sync: SyncPolicy) -> (u64, u64) {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = StdRng::seed_from_u64(seed);
        let limits = Limits {
            max_bytes: 4096,
            segment_bytes: 1024,
            max_record_bytes: 512,
            sync,
            head_write_every: rng.random_range(1..=6),
        };
        let (mut b, _) = open(dir.path(), limits);
        // Records not yet known to be durably acknowledged, oldest first.
        let mut model: VecDeque<Record> = VecDeque::new();
        let (mut head, mut floor, mut next, mut dropped) = (1u64, 1u64, 1u64, 0u64);
        let mut restarts = 0;
        for step in 0..500 {
            let ctx = format!("seed {seed} step {step}");
            match rng.random_range(0..100) {
                0..45 => {
                    let suffix = ["telemetry", "events", ""][rng.random_range(0..3)];
                    let mut payload = vec![0u8; rng.random_range(0..=300)];
                    rng.fill(&mut payload[..]);
                    let out = b.append(suffix, &payload).unwrap();
                    assert_eq!(out.seq, next, "{ctx}");
                    next += 1;
                    model.push_back(Record {
                        seq: out.seq,
                        suffix: suffix.to_owned(),
                        payload,
                    });
                    // Drops take the oldest undelivered records, and persist the head.
                    assert_eq!(b.head_seq() - head, out.dropped, "{ctx}");
                    if out.dropped > 0 {
                        head = b.head_seq();
                        floor = head;
                        dropped += out.dropped;
                    }
                }
                45..70 => {
                    let k = rng.random_range(0..8);
                    let want: Vec<Record> = model
                        .iter()
                        .filter(|r| r.seq >= head)
                        .take(k)
                        .cloned()
                        .collect();
                    assert_eq!(b.peek(k).unwrap(), want, "{ctx}");
                }
                70..88 => {
                    let through = head - 1 + rng.random_range(0..=6);
                    b.ack(through).unwrap();
                    head = head.max((through + 1).min(next));
                }
                88..92 => {
                    b.flush_head().unwrap();
                    floor = head;
                }
                92..95 => {
                    b.flush().unwrap();
                    floor = head;
                }
                _ => {
                    restarts += 1;
                    drop(b);
                    let report;
                    (b, report) = open(dir.path(), limits);
                    assert!(report.is_clean(), "{ctx}: {report:?}");
                    let h = b.head_seq();
                    assert!(
                        floor <= h && h <= head,
                        "{ctx}: head {h} not in {floor}..={head}"
                    );
                    head = h;
                    floor = h;
                }
            }
            while model.front().is_some_and(|r| r.seq < floor) {
                model.pop_front();
            }
            assert_eq!(b.head_seq(), head, "{ctx}");
            assert_eq!(b.next_seq(), next, "{ctx}");
            assert_eq!(b.len(), next - head, "{ctx}");
            assert_eq!(b.is_empty(), next == head, "{ctx}");
            assert_eq!(b.dropped_total(), dropped, "{ctx}");
            assert!(b.bytes() <= limits.max_bytes, "{ctx}");
        }
        let all: Vec<Record> = model.into_iter().filter(|r| r.seq >= head).collect();
        assert_eq!(b.peek(usize::MAX).unwrap(), all, "seed {seed}");
        (dropped, restarts)
    }

    #[test]
    fn model_check() {
        let (mut dropped, mut restarts) = model_run(100, SyncPolicy::Always);
        for seed in 0..16 {
            let sync = match seed % 4 {
                0 => SyncPolicy::EveryN(4),
                _ => SyncPolicy::Never,
            };
            let (d, r) = model_run(seed, sync);
            dropped += d;
            restarts += r;
        }
        // The runs did exercise the interesting paths.
        assert!(
            dropped > 100 && restarts > 50,
            "{dropped} dropped, {restarts} restarts"
        );
    }
}
