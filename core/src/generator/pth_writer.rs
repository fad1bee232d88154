//! Writes PyTorch state dicts in the zip format of `torch.save` (PyTorch 1.6 and later), so
//! that tests can create checkpoints with BigGAN-PyTorch's and torchvision's key names without
//! PyTorch. Only float32 tensors, uncompressed entries.

use std::io::Write;
use std::path::Path;

/// Writes `tensors` (name, shape, row-major values) to `path` as `torch.save(state_dict)` does.
pub fn write_state_dict(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) {
    let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
    entries.push(("archive/data.pkl".into(), pickle(tensors)));
    for (index, (_, _, values)) in tensors.iter().enumerate() {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        entries.push((format!("archive/data/{index}"), bytes));
    }
    entries.push(("archive/byteorder".into(), b"little".to_vec()));
    entries.push(("archive/version".into(), b"3\n".to_vec()));
    std::fs::write(path, zip_stored(&entries)).expect("write checkpoint");
}

/// Returns the pickle (protocol 2) of an `OrderedDict` from names to tensors whose storages
/// are the archive entries `data/<index>`.
fn pickle(tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Vec<u8> {
    let mut out = vec![0x80, 2];
    let global = |out: &mut Vec<u8>, module: &str, name: &str| {
        out.push(b'c');
        out.extend_from_slice(format!("{module}\n{name}\n").as_bytes());
    };
    let string = |out: &mut Vec<u8>, text: &str| {
        out.push(b'X');
        out.extend_from_slice(&(text.len() as u32).to_le_bytes());
        out.extend_from_slice(text.as_bytes());
    };
    let int = |out: &mut Vec<u8>, value: usize| {
        out.push(b'J');
        out.extend_from_slice(&(value as i32).to_le_bytes());
    };
    let ints = |out: &mut Vec<u8>, values: &[usize]| {
        out.push(b'(');
        for &value in values {
            int(out, value);
        }
        out.push(b't');
    };

    global(&mut out, "collections", "OrderedDict");
    out.extend_from_slice(b")R(");
    for (index, (name, shape, values)) in tensors.iter().enumerate() {
        string(&mut out, name);
        global(&mut out, "torch._utils", "_rebuild_tensor_v2");
        out.push(b'(');
        // Persistent id of the storage: ('storage', FloatStorage, key, location, numel).
        out.push(b'(');
        string(&mut out, "storage");
        global(&mut out, "torch", "FloatStorage");
        string(&mut out, &index.to_string());
        string(&mut out, "cpu");
        int(&mut out, values.len());
        out.extend_from_slice(b"tQ");
        int(&mut out, 0);
        ints(&mut out, shape);
        let mut strides = vec![1; shape.len()];
        for i in (0..shape.len().saturating_sub(1)).rev() {
            strides[i] = strides[i + 1] * shape[i + 1];
        }
        ints(&mut out, &strides);
        out.push(0x89);
        global(&mut out, "collections", "OrderedDict");
        out.extend_from_slice(b")R");
        out.extend_from_slice(b"tR");
    }
    out.extend_from_slice(b"u.");
    out
}

/// Returns a zip archive with `entries` stored without compression.
fn zip_stored(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in entries {
        let offset = out.len() as u32;
        let crc = crc32(data);
        let header = |signature: u32, central_entry: bool| {
            let mut h = Vec::new();
            h.write_all(&signature.to_le_bytes()).unwrap();
            if central_entry {
                h.write_all(&20u16.to_le_bytes()).unwrap(); // version made by
            }
            h.write_all(&20u16.to_le_bytes()).unwrap(); // version needed
            h.write_all(&0u16.to_le_bytes()).unwrap(); // flags
            h.write_all(&0u16.to_le_bytes()).unwrap(); // method: stored
            h.write_all(&0u32.to_le_bytes()).unwrap(); // time and date
            h.write_all(&crc.to_le_bytes()).unwrap();
            h.write_all(&(data.len() as u32).to_le_bytes()).unwrap();
            h.write_all(&(data.len() as u32).to_le_bytes()).unwrap();
            h.write_all(&(name.len() as u16).to_le_bytes()).unwrap();
            h.write_all(&0u16.to_le_bytes()).unwrap(); // extra length
            if central_entry {
                h.write_all(&0u16.to_le_bytes()).unwrap(); // comment length
                h.write_all(&0u16.to_le_bytes()).unwrap(); // disk number
                h.write_all(&0u16.to_le_bytes()).unwrap(); // internal attributes
                h.write_all(&0u32.to_le_bytes()).unwrap(); // external attributes
                h.write_all(&offset.to_le_bytes()).unwrap();
            }
            h.extend_from_slice(name.as_bytes());
            h
        };

        out.extend(header(0x0403_4b50, false));
        out.extend_from_slice(data);
        central.extend(header(0x0201_4b50, true));
    }

    // The central directory, then the end-of-central-directory record.
    let central_offset = out.len() as u32;
    let central_len = central.len() as u32;
    out.extend(central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    out.extend_from_slice(&central_len.to_le_bytes());
    out.extend_from_slice(&central_offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

/// CRC-32 (IEEE 802.3), as zip archives use.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &byte in data {
        crc ^= byte as u32;
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_of_check_string() {
        // The standard check value of CRC-32/ISO-HDLC.
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }
}
