//! The uncompressed kernel inside a bzImage: qemu boots it directly (PVH),
//! which skips the bzImage's self-decompression, 8 of 14 s under TCG for 6.1.
use std::{
    fs,
    io::Write as _,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail, ensure};

/// Writes the ELF kernel that `vmlinuz` carries to `out`.
pub fn extract(vmlinuz: &Path, out: &Path) -> anyhow::Result<()> {
    let image = fs::read(vmlinuz).with_context(|| format!("reading {}", vmlinuz.display()))?;
    let (compressed, size) =
        payload(&image).with_context(|| format!("{} is no bzImage", vmlinuz.display()))?;
    let tool = decompressor(compressed)?;
    let elf = decompress(tool, compressed)?;
    ensure!(
        elf.len() == size && elf.starts_with(b"\x7fELF"),
        "{tool} gave {} bytes, not the {size}-byte ELF the bzImage announces",
        elf.len()
    );
    let partial = out.with_extension("partial");
    fs::write(&partial, elf).with_context(|| format!("writing {}", partial.display()))?;
    fs::rename(&partial, out).with_context(|| format!("renaming to {}", out.display()))
}

/// The compressed kernel and its uncompressed size, from the x86 boot
/// protocol's setup header (payload fields since 2.08).
fn payload(image: &[u8]) -> anyhow::Result<(&[u8], usize)> {
    ensure!(image.get(0x202..0x206) == Some(b"HdrS"), "no setup header");
    let version = u16::from_le_bytes(image[0x206..0x208].try_into()?);
    ensure!(
        version >= 0x208,
        "boot protocol {version:#x} has no payload fields"
    );
    let setup_sects = match image[0x1f1] {
        0 => 4,
        n => usize::from(n),
    };
    let offset = u32_at(image, 0x248)? + (setup_sects + 1) * 512;
    let length = u32_at(image, 0x24c)?;
    let payload = image
        .get(offset..offset + length)
        .context("payload past the end of the file")?;
    // The kernel build appends the uncompressed size after the stream.
    let Some((stream, trailer)) = payload.split_last_chunk::<4>() else {
        bail!("payload shorter than its size trailer");
    };
    Ok((stream, u32::from_le_bytes(*trailer) as usize))
}

fn u32_at(image: &[u8], at: usize) -> anyhow::Result<usize> {
    let bytes = image.get(at..at + 4).context("truncated setup header")?;
    Ok(u32::from_le_bytes(bytes.try_into()?) as usize)
}

/// Debian's amd64 kernels: xz for 6.1, zstd for 6.12.
fn decompressor(stream: &[u8]) -> anyhow::Result<&'static str> {
    if stream.starts_with(b"\xfd7zXZ\x00") {
        Ok("xz")
    } else if stream.starts_with(b"\x28\xb5\x2f\xfd") {
        Ok("zstd")
    } else {
        bail!(
            "unknown kernel compression (magic {:02x?})",
            &stream[..stream.len().min(6)]
        )
    }
}

fn decompress(tool: &str, stream: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut child = Command::new(tool)
        .args(["-dc", "-q"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {tool}"))?;
    let mut stdin = child.stdin.take().context("decompressor stdin")?;
    let stream = stream.to_vec();
    // Written from a thread: the pipe would fill while nobody reads stdout.
    let writer = std::thread::spawn(move || stdin.write_all(&stream));
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for {tool}"))?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer thread panicked"))?
        .with_context(|| format!("feeding {tool}"))?;
    ensure!(out.status.success(), "{tool} -dc failed: {}", out.status);
    Ok(out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal bzImage: setup header, one setup sector, payload + trailer.
    fn image(stream: &[u8], size: u32) -> Vec<u8> {
        let mut img = vec![0u8; 2 * 512];
        img[0x1f1] = 1;
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
        img[0x248..0x24c].copy_from_slice(&16u32.to_le_bytes());
        let length = (stream.len() + 4) as u32;
        img[0x24c..0x250].copy_from_slice(&length.to_le_bytes());
        img.extend_from_slice(&[0; 16]);
        img.extend_from_slice(stream);
        img.extend_from_slice(&size.to_le_bytes());
        img
    }

    #[test]
    fn payload_is_found_through_the_setup_header() {
        let img = image(b"\xfd7zXZ\x00rest", 1234);
        let (stream, size) = payload(&img).unwrap();
        assert_eq!(stream, b"\xfd7zXZ\x00rest");
        assert_eq!(size, 1234);
        assert_eq!(decompressor(stream).unwrap(), "xz");
    }

    #[test]
    fn non_bzimages_are_refused() {
        assert!(payload(&[0; 1024]).is_err());
        assert!(decompressor(b"\x1f\x8b\x08").is_err());
    }
}
