//! `run`'s local NDJSON output: each report as one JSON line on stdout or
//! appended to a file, for people and log shippers on the device.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use crate::report::{self, Format, Report};

/// Where the lines go.
pub enum NdjsonOutput {
    None,
    Stdout,
    File {
        path: PathBuf,
        file: BufWriter<File>,
    },
}

impl NdjsonOutput {
    /// `"-"` is standard output, anything else a file to append to.
    pub fn open(target: Option<&str>) -> anyhow::Result<NdjsonOutput> {
        Ok(match target {
            None => NdjsonOutput::None,
            Some("-") => NdjsonOutput::Stdout,
            Some(path) => {
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| anyhow::anyhow!("cannot open output.ndjson file {path}: {e}"))?;
                NdjsonOutput::File {
                    path: path.into(),
                    file: BufWriter::new(file),
                }
            }
        })
    }

    /// Writes one report as one line. CBOR reports are written as short-name
    /// JSON, the same document in text.
    pub fn write(&mut self, report: &Report, format: Format) -> anyhow::Result<()> {
        let text_format = if format == Format::Cbor {
            Format::JsonShort
        } else {
            format
        };
        let mut line = report::encode(report, text_format);
        line.push(b'\n');
        match self {
            NdjsonOutput::None => Ok(()),
            NdjsonOutput::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(&line)?;
                out.flush()?;
                Ok(())
            }
            NdjsonOutput::File { path, file } => file
                .write_all(&line)
                .and_then(|()| file.flush())
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display())),
        }
    }

    pub fn flush(&mut self) -> anyhow::Result<()> {
        if let NdjsonOutput::File { path, file } = self {
            file.flush()
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
        }
        Ok(())
    }
}
