//! Recordings: what the engine consumed, one JSON object per line, so the
//! same engine can run again from a file (`tcpwatch replay`) and tests of
//! detectors and views run without a kernel.
//!
//! Format (version 1):
//! - line 1, the header: `{"format":"tcpwatch-recording","version":1,...}`;
//! - then one [`Input`] per line, externally tagged:
//!   `{"transition":{...}}`, `{"census":{...}}`, `{"counters":{...}}`,
//!   `{"kernel":{...}}`, `{"tick":{"ts_ns":...}}`.
//!
//! Times are CLOCK_MONOTONIC nanoseconds of the recording host; the header
//! carries the wall-clock time of one instant to place them. A reader
//! refuses another format or a newer version, and names the line of any
//! entry it cannot read.
use std::io::{self, BufRead, Read, Write};

use serde::{Deserialize, Serialize};

use crate::{engine::Input, model::Transition};

pub const FORMAT: &str = "tcpwatch-recording";
pub const VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub format: String,
    pub version: u32,
    /// tcpwatch version that wrote it.
    pub writer: String,
    /// CLOCK_MONOTONIC and Unix time (ns) of one instant at the start.
    pub monotonic_ns: u64,
    pub unix_ns: i128,
    /// The kernel hook the transitions came from, if live.
    pub hook: Option<String>,
}

impl Header {
    pub fn new(monotonic_ns: u64, unix_ns: i128, hook: Option<String>) -> Header {
        Header {
            format: FORMAT.into(),
            version: VERSION,
            writer: env!("CARGO_PKG_VERSION").into(),
            monotonic_ns,
            unix_ns,
            hook,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("reading the recording: {0}")]
    Io(#[from] io::Error),
    #[error("the recording is empty")]
    Empty,
    #[error("not a tcpwatch recording (line 1 is not its header): {0}")]
    NotARecording(String),
    #[error("recording format version {0}; this tcpwatch reads version {VERSION}")]
    Version(u32),
    #[error("line {line}: {message}")]
    Line { line: u64, message: String },
    #[error("line {line} is longer than {MAX_LINE} bytes: not a recording's")]
    TooLong { line: u64 },
    /// The last line ends without its newline and does not parse: the
    /// recorder stopped mid-line (killed, disk full). What came before it
    /// is whole.
    #[error("line {line} is cut short (the recorder stopped mid-line)")]
    Cut { line: u64 },
}

/// The longest line a reader takes (a census of a namespace with many
/// thousands of sockets is a few MiB).
pub const MAX_LINE: usize = 16 << 20;

/// Reads one line of at most `MAX_LINE` bytes into `buf` (cleared first):
/// its length, 0 at the end, or `TooLong`.
fn bounded_line<R: BufRead>(
    input: &mut R,
    buf: &mut String,
    line: u64,
) -> Result<usize, RecordError> {
    buf.clear();
    let n = (&mut *input).take(MAX_LINE as u64 + 1).read_line(buf)?;
    if n > MAX_LINE && !buf.ends_with('\n') {
        return Err(RecordError::TooLong { line });
    }
    Ok(n)
}

pub struct Writer<W: Write> {
    out: io::BufWriter<W>,
    lines: u64,
    /// One line, made whole before it goes to `out`.
    line: Vec<u8>,
}

impl<W: Write> Writer<W> {
    pub fn new(out: W, header: &Header) -> io::Result<Self> {
        let mut w = Writer {
            out: io::BufWriter::with_capacity(1 << 16, out),
            lines: 0,
            line: Vec::with_capacity(512),
        };
        w.line(header)?;
        Ok(w)
    }

    /// Hands `out` one whole line in one call: the buffer then reaches the
    /// file in whole lines only (it is flushed before a line that does not
    /// fit, and a line longer than it goes straight through), so a
    /// recorder killed at any moment leaves no cut line short of a write
    /// the kernel itself cut (a full disk).
    fn line<T: Serialize>(&mut self, v: &T) -> io::Result<()> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, v)?;
        self.line.push(b'\n');
        self.out.write_all(&self.line)?;
        self.lines += 1;
        Ok(())
    }

    pub fn write(&mut self, input: &Input) -> io::Result<()> {
        self.line(input)
    }

    /// The line `write(&Input::Transition(t.clone()))` writes, without
    /// building the input (the daemon's hot path).
    pub fn write_transition(&mut self, t: &Transition) -> io::Result<()> {
        /// `Input`'s serialized form, by reference.
        #[derive(Serialize)]
        #[serde(rename_all = "snake_case")]
        enum InputRef<'a> {
            Transition(&'a Transition),
        }
        self.line(&InputRef::Transition(t))
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// Lines written, header included.
    pub fn lines(&self) -> u64 {
        self.lines
    }
}

pub struct Reader<R: BufRead> {
    input: R,
    line: u64,
    buf: String,
    /// An error ended the reading.
    done: bool,
}

impl<R: BufRead> Reader<R> {
    /// Reads and checks the header.
    pub fn new(mut input: R) -> Result<(Header, Self), RecordError> {
        let mut buf = String::new();
        if bounded_line(&mut input, &mut buf, 1)? == 0 {
            return Err(RecordError::Empty);
        }
        let header: Header = serde_json::from_str(buf.trim_end())
            .map_err(|e| RecordError::NotARecording(e.to_string()))?;
        if header.format != FORMAT {
            return Err(RecordError::NotARecording(format!(
                "format {:?}",
                header.format
            )));
        }
        if header.version != VERSION {
            return Err(RecordError::Version(header.version));
        }
        Ok((
            header,
            Reader {
                input,
                line: 1,
                buf,
                done: false,
            },
        ))
    }
}

impl<R: BufRead> Iterator for Reader<R> {
    type Item = Result<Input, RecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            self.line += 1;
            match bounded_line(&mut self.input, &mut self.buf, self.line) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => {
                    // Nothing after an unreadable line can be trusted.
                    self.buf.clear();
                    self.done = true;
                    return Some(Err(e));
                }
            }
            if self.done {
                return None;
            }
            let whole = self.buf.ends_with('\n');
            let text = self.buf.trim();
            if text.is_empty() {
                continue;
            }
            return Some(serde_json::from_str(text).map_err(|e| {
                if whole {
                    RecordError::Line {
                        line: self.line,
                        message: e.to_string(),
                    }
                } else {
                    RecordError::Cut { line: self.line }
                }
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header::new(5, 1_700_000_000_000_000_000, Some("btf".into()))
    }

    #[test]
    fn round_trip() {
        let mut buf = Vec::new();
        let inputs = vec![Input::Tick { ts_ns: 7 }, Input::Tick { ts_ns: 9 }];
        let mut w = Writer::new(&mut buf, &header()).unwrap();
        for i in &inputs {
            w.write(i).unwrap();
        }
        w.flush().unwrap();
        assert_eq!(w.lines(), 3);
        drop(w);
        let text = String::from_utf8(buf).unwrap();
        assert!(text.starts_with("{\"format\":\"tcpwatch-recording\",\"version\":1,"));
        assert!(text.contains("\n{\"tick\":{\"ts_ns\":7}}\n"), "{text}");
        let (h, r) = Reader::new(text.as_bytes()).unwrap();
        assert_eq!(h, header());
        let back: Vec<Input> = r.map(Result::unwrap).collect();
        assert_eq!(back, inputs);
    }

    #[test]
    fn a_transition_by_reference_is_the_same_line_as_its_input() {
        let t: crate::model::Transition = serde_json::from_str(
            r#"{"ts_ns":5,"skaddr":7,"netns":9,"owner":{"pid":1,"tid":2,"comm":"curl"},
                "old":"SYN-SENT","new":"ESTABLISHED","protocol":"tcp",
                "local":"127.0.0.1:40000","remote":"127.0.0.1:80","in_old_ns":1500,
                "caught":false}"#,
        )
        .unwrap();
        let lines = |by_ref: bool| {
            let mut buf = Vec::new();
            let mut w = Writer::new(&mut buf, &header()).unwrap();
            if by_ref {
                w.write_transition(&t).unwrap();
            } else {
                w.write(&Input::Transition(t.clone())).unwrap();
            }
            drop(w);
            String::from_utf8(buf).unwrap()
        };
        let text = lines(true);
        assert_eq!(text, lines(false));
        let (_, r) = Reader::new(text.as_bytes()).unwrap();
        let back: Vec<Input> = r.map(Result::unwrap).collect();
        assert_eq!(back, vec![Input::Transition(t.clone())]);
    }

    #[test]
    fn refuses_what_it_cannot_read_and_names_the_line() {
        assert!(matches!(Reader::new(&b""[..]), Err(RecordError::Empty)));
        assert!(matches!(
            Reader::new(&b"{\"time\":1}\n"[..]),
            Err(RecordError::NotARecording(_))
        ));
        let mut h = header();
        h.version = 2;
        let text = serde_json::to_string(&h).unwrap();
        let err = Reader::new(text.as_bytes()).err().unwrap().to_string();
        assert_eq!(
            err,
            "recording format version 2; this tcpwatch reads version 1"
        );
        let text = format!(
            "{}\n{{\"tick\":{{\"ts_ns\":1}}}}\n\n{{\"bogus\":1}}\n",
            serde_json::to_string(&header()).unwrap()
        );
        let (_, r) = Reader::new(text.as_bytes()).unwrap();
        let items: Vec<_> = r.collect();
        assert!(items[0].is_ok());
        let err = items[1].as_ref().unwrap_err().to_string();
        assert!(err.starts_with("line 4: unknown variant `bogus`"), "{err}");
    }

    #[test]
    fn a_cut_last_line_is_told_apart_and_what_precedes_it_is_read() {
        let head = serde_json::to_string(&header()).unwrap();
        let text = format!("{head}\n{{\"tick\":{{\"ts_ns\":1}}}}\n{{\"tick\":{{\"ts_n");
        let (_, r) = Reader::new(text.as_bytes()).unwrap();
        let items: Vec<_> = r.collect();
        assert_eq!(items.len(), 2);
        assert!(items[0].is_ok());
        assert!(matches!(items[1], Err(RecordError::Cut { line: 3 })));
        // A whole last line without its newline is just a line.
        let text = format!("{head}\n{{\"tick\":{{\"ts_ns\":1}}}}");
        let (_, r) = Reader::new(text.as_bytes()).unwrap();
        assert_eq!(r.map(Result::unwrap).count(), 1);
    }

    #[test]
    fn a_line_longer_than_the_limit_is_refused_without_reading_it_all() {
        let head = serde_json::to_string(&header()).unwrap();
        let mut text = format!("{head}\n").into_bytes();
        text.extend(std::iter::repeat_n(b'x', MAX_LINE + 10));
        let (_, mut r) = Reader::new(&text[..]).unwrap();
        assert!(matches!(
            r.next(),
            Some(Err(RecordError::TooLong { line: 2 }))
        ));
        assert!(r.next().is_none());
        // The header too (`replay /dev/zero`).
        let zeros = vec![0u8; MAX_LINE + 1];
        assert!(matches!(
            Reader::new(&zeros[..]),
            Err(RecordError::TooLong { line: 1 })
        ));
    }
}
