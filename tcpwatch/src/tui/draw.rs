//! Lays `top`'s model out on a frame: header, census with trends,
//! transitions, alerts, listeners, processes, footer; the detail view and
//! help on top. Pure: no I/O, the model decides every number.
use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Table, TableState},
};
use tcpwatch_core::{
    detect::{Alert, Severity},
    view::top::{
        Detail, Pane, RateWindow, Top,
        fmt::{self, bar, count, rate, sparkline},
        netns_name,
    },
};

const TITLE: Style = Style::new().add_modifier(Modifier::BOLD);
const HEAD: Style = Style::new()
    .fg(Color::Black)
    .bg(Color::Gray)
    .add_modifier(Modifier::BOLD);
const WARN: Style = Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD);
const BAD: Style = Style::new().fg(Color::Red).add_modifier(Modifier::BOLD);
const DIM: Style = Style::new().fg(Color::DarkGray);

/// The keys, as `?` shows them and the README lists them.
pub const HELP: &[(&str, &str)] = &[
    ("Tab ← → h l", "next / previous pane"),
    ("↑ ↓ j k PgUp PgDn g G", "move in the pane"),
    ("Enter", "detail of the listener or process"),
    ("Esc", "close detail, clear filter, or quit"),
    ("/", "filter by port, address, pid or name"),
    ("s", "next sort order of the pane"),
    ("1 2 3", "rates over 1 s, 10 s, 60 s"),
    ("space p", "pause / resume"),
    ("n", "next network namespace (then all)"),
    ("?", "this help"),
    ("q Ctrl-C", "quit"),
];

pub fn draw(f: &mut Frame, top: &Top) {
    let area = f.area();
    let footer_h = if area.height >= 30 { 2 } else { 1 };
    let upper_h = 12.min(area.height.saturating_sub(footer_h + 6));
    let (active, recent) = top.alerts();
    // One line, or one per active alert up to three (more are counted).
    let alerts_h = (active.len() as u16).clamp(1, 3);
    let [header, upper, alerts, lower, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(upper_h),
        Constraint::Length(alerts_h),
        Constraint::Fill(1),
        Constraint::Length(footer_h),
    ])
    .areas(area);
    draw_header(f, top, header);
    let [census, pairs] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(upper);
    draw_census(f, top, census);
    draw_pairs(f, top, pairs);
    draw_alerts(f, &active, recent, alerts);
    match top.detail() {
        Some(d) => draw_detail(f, &d, lower),
        None => {
            // Listeners take what they need up to half; processes the rest.
            let want = u16::try_from(top.listeners().len())
                .unwrap_or(u16::MAX)
                .saturating_add(2);
            let [l, p] = Layout::vertical([
                Constraint::Length(want.min(lower.height / 2).max(3)),
                Constraint::Fill(1),
            ])
            .areas(lower);
            draw_listeners(f, top, l);
            draw_processes(f, top, p);
        }
    }
    draw_footer(f, top, footer);
    if top.help {
        draw_help(f, area);
    }
}

fn window_name(w: RateWindow) -> &'static str {
    match w {
        RateWindow::S1 => "1s",
        RateWindow::S10 => "10s",
        RateWindow::S60 => "60s",
    }
}

fn draw_header(f: &mut Frame, top: &Top, area: Rect) {
    let mut spans = vec![
        Span::styled("tcpwatch top", TITLE),
        Span::raw(format!(
            " · {} · {} · rates over {}",
            top.source,
            top.scope_name(),
            window_name(top.window)
        )),
    ];
    if let Some(s) = top.snapshot() {
        spans.push(Span::raw(format!(" · {}", s.clock.wall_hms(s.view.now_ns))));
    }
    if top.paused {
        spans.push(Span::styled(" · PAUSED", WARN));
    }
    if top.editing || !top.filter.is_empty() {
        let cursor = if top.editing { "_" } else { "" };
        spans.push(Span::styled(format!(" · /{}{cursor}", top.filter), WARN));
    } else {
        spans.push(Span::styled(" · ? help", DIM));
    }
    f.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn titled(title: String, focused: bool) -> Block<'static> {
    Block::new()
        .borders(Borders::TOP)
        .title(Span::styled(
            title,
            if focused {
                TITLE.fg(Color::Cyan)
            } else {
                TITLE
            },
        ))
        .border_style(DIM)
}

fn draw_census(f: &mut Frame, top: &Top, area: Rect) {
    let block = titled("Sockets by state".into(), false);
    let inner = block.inner(area);
    f.render_widget(block, area);
    let rows = top.states();
    let max = rows.iter().map(|r| r.count).max().unwrap_or(0);
    // STATE (11) count (6) bar, trend: the bar and trend share the rest.
    // One column of margin before the next pane.
    let rest = (inner.width as usize).saturating_sub(11 + 1 + 6 + 1 + 1 + 1);
    let bar_w = rest / 2;
    let trend_w = rest - bar_w;
    let lines: Vec<Line> = rows
        .iter()
        .map(|r| {
            let style = match r.state.as_str() {
                "CLOSE-WAIT" if r.count > 0 => WARN,
                "SYN-RECV" if r.count > 0 => WARN,
                _ => Style::new(),
            };
            Line::from(vec![
                Span::styled(format!("{:<11} {:>6} ", r.state, count(r.count)), style),
                Span::styled(bar(r.count, max, bar_w), Style::new().fg(Color::Blue)),
                Span::raw(" "),
                Span::styled(sparkline(&r.trend, trend_w), Style::new().fg(Color::Green)),
            ])
        })
        .collect();
    if lines.is_empty() {
        f.render_widget(
            Paragraph::new("waiting for the first census…").style(DIM),
            inner,
        );
    } else {
        f.render_widget(Paragraph::new(lines), inner);
    }
}

fn selected_state(top: &Top, pane: Pane, rows: usize) -> TableState {
    let mut s = TableState::default();
    if top.pane == pane && rows > 0 {
        s.select(Some(top.selected_in(pane, rows)));
    }
    s
}

fn table<'a>(
    rows: Vec<Row<'a>>,
    header: &'a [&'a str],
    widths: &'a [Constraint],
    block: Block<'a>,
) -> Table<'a> {
    Table::new(rows, widths.to_vec())
        .header(Row::new(header.iter().copied()).style(HEAD))
        .block(block)
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
}

fn draw_pairs(f: &mut Frame, top: &Top, area: Rect) {
    let pairs = top.pairs();
    let rows: Vec<Row> = pairs
        .iter()
        .map(|p| {
            Row::new([
                Cell::from(format!("{} → {}", p.from, p.to)),
                Cell::from(rate(Some(p.per_s))),
                Cell::from(count(p.total)),
            ])
        })
        .collect();
    let title = format!(
        "Transitions/s ({}, by {})",
        window_name(top.window),
        top.sort_name(Pane::Transitions)
    );
    let mut state = selected_state(top, Pane::Transitions, pairs.len());
    f.render_stateful_widget(
        table(
            rows,
            &["FROM → TO", "/s", "TOTAL"],
            &[
                Constraint::Fill(1),
                Constraint::Length(7),
                Constraint::Length(7),
            ],
            titled(title, top.pane == Pane::Transitions),
        ),
        area,
        &mut state,
    );
}

fn draw_alerts(f: &mut Frame, active: &[Alert], recent: usize, area: Rect) {
    let title = Span::styled("Alerts ", TITLE);
    if active.is_empty() {
        let rest = if recent > 0 {
            format!("none active ({recent} resolved recently: `tcpwatch alerts`)")
        } else {
            "none".to_string()
        };
        f.render_widget(
            Paragraph::new(Line::from(vec![title, Span::styled(rest, DIM)])),
            area,
        );
        return;
    }
    let shown = area.height as usize;
    let lines: Vec<Line> = active
        .iter()
        .take(shown)
        .enumerate()
        .map(|(i, a)| {
            let style = match a.severity {
                Severity::Critical => BAD,
                Severity::Warning => WARN,
            };
            let more = if i + 1 == shown && active.len() > shown {
                format!(" (+{} more)", active.len() - shown)
            } else {
                String::new()
            };
            Line::from(vec![
                if i == 0 {
                    title.clone()
                } else {
                    Span::raw("       ")
                },
                Span::styled(
                    format!(
                        "{} {}",
                        match a.severity {
                            Severity::Critical => "CRIT",
                            Severity::Warning => "WARN",
                        },
                        fmt::comm(Some(&a.summary))
                    ),
                    style,
                ),
                Span::raw(more),
            ])
        })
        .collect();
    f.render_widget(Paragraph::new(lines), area);
}

/// A NETNS cell first when the rows come from several namespaces.
fn ns_cell(many: bool, netns: u32) -> Vec<Cell<'static>> {
    if many {
        vec![Cell::from(netns_name(netns))]
    } else {
        Vec::new()
    }
}

fn with_ns(many: bool, header: &[&'static str]) -> Vec<&'static str> {
    let mut v = if many { vec!["NETNS"] } else { Vec::new() };
    v.extend_from_slice(header);
    v
}

fn with_ns_width(many: bool, widths: &[Constraint]) -> Vec<Constraint> {
    let mut v = if many {
        vec![Constraint::Length(10)]
    } else {
        Vec::new()
    };
    v.extend_from_slice(widths);
    v
}

fn draw_listeners(f: &mut Frame, top: &Top, area: Rect) {
    let many = top.many_namespaces();
    let ls = top.listeners();
    let counters: Vec<String> = top
        .counters()
        .iter()
        .map(|c| format!("{} {}/s", c.name, rate(c.per_s)))
        .collect();
    let title = format!(
        "Listeners ({}, by {}) · namespace-wide: {}",
        ls.len(),
        top.sort_name(Pane::Listeners),
        counters.join(" · ")
    );
    let rows: Vec<Row> = ls
        .iter()
        .map(|l| {
            let full = l.backlog > 0 && l.syn_recv >= u64::from(l.backlog);
            let half = l.backlog > 0 && l.syn_recv.saturating_mul(2) >= u64::from(l.backlog);
            let syn_style = if full {
                BAD
            } else if half {
                WARN
            } else {
                Style::new()
            };
            let acc_style = if l.backlog > 0 && l.accept_queue >= l.backlog {
                BAD
            } else {
                Style::new()
            };
            let mut cells = ns_cell(many, l.netns);
            cells.extend([
                Cell::from(format!("{}:{}", fmt::address(&l.address), l.port)),
                Cell::from(fmt::pid(l.pid)),
                Cell::from(fmt::comm(l.comm.as_deref())),
                Cell::from(format!("{}/{}", count(l.syn_recv), count(l.backlog.into())))
                    .style(syn_style),
                Cell::from(count(l.accept_queue.into())).style(acc_style),
                Cell::from(rate(l.accepted_per_s)),
                Cell::from(count(l.states.get("ESTABLISHED").copied().unwrap_or(0))),
                Cell::from(count(l.states.get("CLOSE-WAIT").copied().unwrap_or(0))),
            ]);
            Row::new(cells)
        })
        .collect();
    let mut state = selected_state(top, Pane::Listeners, ls.len());
    f.render_stateful_widget(
        table(
            rows,
            &with_ns(
                many,
                &[
                    "ADDRESS:PORT",
                    "PID",
                    "COMM",
                    "SYNRQ/BKLG",
                    "ACCQ",
                    "ACC/s",
                    "ESTAB",
                    "CLOSE-WAIT",
                ],
            ),
            &with_ns_width(
                many,
                &[
                    Constraint::Fill(2),
                    Constraint::Length(7),
                    Constraint::Fill(1),
                    Constraint::Length(11),
                    Constraint::Length(5),
                    Constraint::Length(6),
                    Constraint::Length(6),
                    Constraint::Length(10),
                ],
            ),
            titled(title, top.pane == Pane::Listeners),
        ),
        area,
        &mut state,
    );
}

fn draw_processes(f: &mut Frame, top: &Top, area: Rect) {
    let many = top.many_namespaces();
    let ps = top.processes();
    let title = format!(
        "Processes ({}, by {})",
        ps.len(),
        top.sort_name(Pane::Processes)
    );
    let rows: Vec<Row> = ps
        .iter()
        .map(|p| {
            let st = |s: &str| count(p.states.get(s).copied().unwrap_or(0));
            let cw = match (p.close_wait, p.close_wait_oldest_s) {
                (0, _) => "0".to_string(),
                (n, Some(age)) => format!("{} {}", count(n), fmt::age(age)),
                (n, None) => count(n),
            };
            let cw_style = match p.close_wait_oldest_s {
                _ if p.close_wait == 0 => Style::new(),
                Some(age) if age >= 60.0 => BAD,
                _ => WARN,
            };
            let mut cells = ns_cell(many, p.netns);
            cells.extend([
                Cell::from(fmt::pid(p.pid)),
                Cell::from(fmt::comm(p.comm.as_deref())),
                Cell::from(count(p.sockets)),
                Cell::from(st("ESTABLISHED")),
                Cell::from(cw).style(cw_style),
                Cell::from(st("TIME-WAIT")),
                Cell::from(rate(p.connects_per_s)),
                Cell::from(p.failed.map_or("-".into(), count)).style(
                    if p.failed.is_some_and(|n| n > 0) {
                        WARN
                    } else {
                        Style::new()
                    },
                ),
                Cell::from(rate(p.transitions_per_s)),
            ]);
            Row::new(cells)
        })
        .collect();
    let mut state = selected_state(top, Pane::Processes, ps.len());
    f.render_stateful_widget(
        table(
            rows,
            &with_ns(
                many,
                &[
                    "PID",
                    "COMM",
                    "SOCKS",
                    "ESTAB",
                    "CLOSE-WAIT",
                    "TIME-W",
                    "CONN/s",
                    "FAILED",
                    "TRANS/s",
                ],
            ),
            &with_ns_width(
                many,
                &[
                    Constraint::Length(7),
                    Constraint::Fill(1),
                    Constraint::Length(6),
                    Constraint::Length(6),
                    Constraint::Length(11),
                    Constraint::Length(6),
                    Constraint::Length(6),
                    Constraint::Length(6),
                    Constraint::Length(7),
                ],
            ),
            titled(title, top.pane == Pane::Processes),
        ),
        area,
        &mut state,
    );
}

fn draw_detail(f: &mut Frame, d: &Detail, area: Rect) {
    let block = Block::new()
        .borders(Borders::ALL)
        .border_style(Style::new().fg(Color::Cyan))
        .title(Span::styled(format!(" {} ", d.title), TITLE))
        .title_bottom(Span::styled(" Esc: back ", DIM));
    let inner = block.inner(area);
    f.render_widget(Clear, area);
    f.render_widget(block, area);
    if d.gone {
        f.render_widget(
            Paragraph::new(
                "gone: no longer in the daemon's tables (closed, exited, or past its caps)",
            )
            .style(WARN),
            inner,
        );
        return;
    }
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(inner);
    let mut lines: Vec<Line> = d
        .facts
        .iter()
        .map(|(k, v)| {
            Line::from(vec![
                Span::styled(format!("{k:<20} "), DIM),
                Span::raw(v.clone()),
            ])
        })
        .collect();
    if !d.trend_name.is_empty() {
        let w = (left.width as usize).saturating_sub(21);
        lines.push(Line::from(vec![
            Span::styled(format!("{:<20} ", d.trend_name), DIM),
            Span::styled(sparkline(&d.trend, w), Style::new().fg(Color::Green)),
        ]));
    }
    lines.push(Line::from(Span::styled("sockets by state", TITLE)));
    if d.states.is_empty() {
        lines.push(Line::from(Span::styled("none", DIM)));
    }
    for (s, n) in &d.states {
        lines.push(Line::from(format!("  {s:<12} {:>7}", count(*n))));
    }
    f.render_widget(Paragraph::new(lines), left);
    let rows: Vec<Row> = d
        .pairs
        .iter()
        .map(|(a, b, n)| Row::new([format!("{a} → {b}"), count(*n)]))
        .collect();
    f.render_widget(
        Table::new(rows, [Constraint::Fill(1), Constraint::Length(8)])
            .header(Row::new(["TRANSITIONS (since start)", "TOTAL"]).style(HEAD)),
        right,
    );
}

fn draw_footer(f: &mut Frame, top: &Top, area: Rect) {
    let ft = top.footer();
    let lost: u64 = ft.losses.iter().map(|(_, n)| n).sum();
    let losses = if ft.losses.is_empty() {
        Span::styled("lost: -", DIM)
    } else if lost == 0 {
        Span::raw("lost: none")
    } else {
        let named: Vec<String> = ft
            .losses
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(why, n)| format!("{why} {}", count(*n)))
            .collect();
        Span::styled(format!("lost: {}", named.join(", ")), BAD)
    };
    let mut surplus = Vec::new();
    if ft.double_counted > 0 {
        surplus.push(format!("double-counted {}", count(ft.double_counted)));
    }
    if ft.nested > 0 {
        surplus.push(format!("nested runs {}", count(ft.nested)));
    }
    let surplus = if surplus.is_empty() {
        Span::raw("")
    } else {
        Span::styled(format!(" · {}", surplus.join(", ")), WARN)
    };
    let witness = match ft.witness {
        Some(true) => Span::raw(" (witness on)"),
        Some(false) => Span::styled(" (witness off: not-run firings uncounted)", WARN),
        None => Span::raw(""),
    };
    let mut spans = vec![
        Span::styled(format!("events {}/s", rate(ft.events_per_s)), TITLE),
        Span::raw(" · "),
        losses,
        witness,
        surplus,
        Span::raw(format!(
            " · {} CPU {} RSS {}",
            if top.in_process {
                "this process"
            } else {
                "daemon"
            },
            ft.daemon_cpu_pct.map_or("-".into(), |c| format!("{c:.1}%")),
            ft.daemon_rss.map_or("-".into(), fmt::bytes),
        )),
    ];
    if ft.missed > 0 {
        spans.push(Span::styled(
            format!(" · {} snapshots skipped", count(ft.missed)),
            WARN,
        ));
    }
    let mut lines = vec![Line::from(spans)];
    if area.height > 1 {
        lines.push(Line::from(Span::styled(
            format!(
                "hook {} · {} delivered · Tab pane · Enter detail · / filter · s sort · 1/2/3 window · p pause · n netns · q quit",
                ft.hook.as_deref().unwrap_or("-"),
                count(ft.delivered)
            ),
            DIM,
        )));
    }
    f.render_widget(Paragraph::new(lines), area);
}

fn draw_help(f: &mut Frame, area: Rect) {
    let w = 62.min(area.width);
    let h = (HELP.len() as u16 + 2).min(area.height);
    let popup = Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    };
    let lines: Vec<Line> = HELP
        .iter()
        .map(|(k, what)| {
            Line::from(vec![
                Span::styled(format!("{k:<22} "), TITLE),
                Span::raw(*what),
            ])
        })
        .collect();
    f.render_widget(Clear, popup);
    f.render_widget(
        Paragraph::new(lines).block(
            Block::new()
                .borders(Borders::ALL)
                .title(Span::styled(" keys (any key closes) ", TITLE)),
        ),
        popup,
    );
}
