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
use std::io::{self, BufRead, Write};

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
}

pub struct Writer<W: Write> {
    out: io::BufWriter<W>,
    lines: u64,
}

impl<W: Write> Writer<W> {
    pub fn new(out: W, header: &Header) -> io::Result<Self> {
        let mut w = Writer {
            out: io::BufWriter::with_capacity(1 << 16, out),
            lines: 0,
        };
        w.line(header)?;
        Ok(w)
    }

    fn line<T: Serialize>(&mut self, v: &T) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, v)?;
        self.out.write_all(b"\n")?;
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
}

impl<R: BufRead> Reader<R> {
    /// Reads and checks the header.
    pub fn new(mut input: R) -> Result<(Header, Self), RecordError> {
        let mut buf = String::new();
        if input.read_line(&mut buf)? == 0 {
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
            },
        ))
    }
}

impl<R: BufRead> Iterator for Reader<R> {
    type Item = Result<Input, RecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            self.buf.clear();
            self.line += 1;
            match self.input.read_line(&mut self.buf) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => return Some(Err(e.into())),
            }
            let text = self.buf.trim();
            if text.is_empty() {
                continue;
            }
            return Some(serde_json::from_str(text).map_err(|e| RecordError::Line {
                line: self.line,
                message: e.to_string(),
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
}
