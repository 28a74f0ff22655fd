//! HTML escaping for Telegram's `parse_mode=HTML`.
//!
//! Telegram rejects a message (400 "can't parse entities") when text contains a bare `<`, `>` or
//! `&`; the Python job sent object names raw, so a shop called "Tom & Jerry" never got reminders.
//! Every value that comes from the database goes through [`escape_html`] before it is placed
//! between our own tags. Telegram supports exactly these three entities plus `&quot;`.

/// Escapes `&`, `<`, `>` and `"` for Telegram's HTML parse mode.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::escape_html;

    #[test]
    fn escapes_markup_characters() {
        assert_eq!(
            escape_html(r#"<b>Tom & "Jerry"</b>"#),
            "&lt;b&gt;Tom &amp; &quot;Jerry&quot;&lt;/b&gt;"
        );
        assert_eq!(escape_html("Склад №1"), "Склад №1");
    }
}
