//! Where in the file a key is: the line an error names, found from a
//! parse error's byte span or from a dotted key.

/// Line (1-based) of byte `offset`, and the dotted key written on that line
/// (with its `[section]`), for parse errors that only carry a span.
pub(super) fn locate_span(text: &str, offset: usize) -> (Option<usize>, Option<String>) {
    let offset = offset.min(text.len());
    let line_no = text[..offset].matches('\n').count() + 1;
    let mut section = String::new();
    let mut key = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if i + 1 > line_no {
            break;
        }
        if let Some(s) = trimmed.strip_prefix('[') {
            section = s.trim_matches(|c| c == '[' || c == ']').trim().to_string();
            if i + 1 == line_no {
                key = Some(section.clone());
            }
        } else if i + 1 == line_no {
            key = trimmed.split_once('=').map(|(k, _)| {
                let k = k.trim().trim_matches('"');
                if section.is_empty() {
                    k.to_string()
                } else {
                    format!("{section}.{k}")
                }
            });
        }
    }
    (Some(line_no), key)
}

/// Line (1-based) where `section.key` is set in `text`, if it is.
pub(super) fn find_key_line(text: &str, dotted: &str) -> Option<usize> {
    let (want_section, want_key) = match dotted.rsplit_once('.') {
        Some((s, k)) => (s, k),
        None => ("", dotted),
    };
    let mut section = String::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if let Some(s) = trimmed.strip_prefix('[') {
            section = s.trim_matches(|c| c == '[' || c == ']').trim().to_string();
        } else if let Some((k, _)) = trimmed.split_once('=') {
            if section == want_section && k.trim().trim_matches('"') == want_key {
                return Some(i + 1);
            }
        }
    }
    None
}
