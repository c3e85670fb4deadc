//! The real terminal: raw mode and the alternate screen while `top` runs,
//! restored on every exit (return, error, panic: ratatui's init installs a
//! panic hook that restores before the message prints), and its key and
//! resize events as [`Event`]s.
use ratatui::{
    DefaultTerminal,
    crossterm::event::{self, Event as TermEvent, KeyCode, KeyEventKind, KeyModifiers},
};
use tcpwatch_core::view::top::Key;
use tokio::sync::mpsc;

use super::Event;

/// Restores the terminal when dropped.
pub struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

pub fn enter() -> std::io::Result<(DefaultTerminal, Restore)> {
    let t = ratatui::try_init()?;
    Ok((t, Restore))
}

/// Reads the terminal's events on a thread of its own (crossterm blocks)
/// until the app is gone.
pub fn spawn_keys(tx: mpsc::Sender<Event>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("tcpwatch-keys".into())
        .spawn(move || {
            loop {
                let ev = match event::read() {
                    Ok(TermEvent::Key(k)) if k.kind != KeyEventKind::Release => {
                        match map(k.code, k.modifiers) {
                            Some(k) => Event::Key(k),
                            None => continue,
                        }
                    }
                    Ok(TermEvent::Resize(..)) => Event::Resize,
                    Ok(_) => continue,
                    Err(e) => Event::Failed(format!("reading the terminal: {e}")),
                };
                let failed = matches!(ev, Event::Failed(_));
                if tx.blocking_send(ev).is_err() || failed {
                    return;
                }
            }
        })
        .map(|_| ())
}

fn map(code: KeyCode, m: KeyModifiers) -> Option<Key> {
    Some(match code {
        KeyCode::Char(c) if m.contains(KeyModifiers::CONTROL) => Key::Ctrl(c.to_ascii_lowercase()),
        KeyCode::Char(c) => Key::Char(c),
        KeyCode::Enter => Key::Enter,
        KeyCode::Esc => Key::Esc,
        KeyCode::Tab => Key::Tab,
        KeyCode::BackTab => Key::BackTab,
        KeyCode::Up => Key::Up,
        KeyCode::Down => Key::Down,
        KeyCode::Left => Key::Left,
        KeyCode::Right => Key::Right,
        KeyCode::PageUp => Key::PageUp,
        KeyCode::PageDown => Key::PageDown,
        KeyCode::Home => Key::Home,
        KeyCode::End => Key::End,
        KeyCode::Backspace => Key::Backspace,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_c_is_its_own_key() {
        assert_eq!(
            map(KeyCode::Char('c'), KeyModifiers::CONTROL),
            Some(Key::Ctrl('c'))
        );
        assert_eq!(
            map(KeyCode::Char('q'), KeyModifiers::NONE),
            Some(Key::Char('q'))
        );
        assert_eq!(map(KeyCode::F(1), KeyModifiers::NONE), None);
    }
}
