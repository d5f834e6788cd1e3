//! Pure-Rust timing of the flattener on a JSON-lines file, to profile without Python:
//! `cargo run --release --no-default-features --example parse_speed -- events.jsonl`
use std::time::Instant;

fn main() {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/tmp/ev.jsonl".into());
    let data = std::fs::read(&path).expect("a JSON-lines file of events");
    let events: Vec<&[u8]> = data
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let per_event =
        |start: Instant| start.elapsed().as_secs_f64() / (rounds * events.len()) as f64 * 1e6;
    let t = Instant::now();
    for _ in 0..rounds {
        for e in &events {
            let text = std::str::from_utf8(e).unwrap_or("");
            let _ = std::hint::black_box(flatten_rs::json::parse(std::hint::black_box(text)));
        }
    }
    println!("parse   {:.2} us/event", per_event(t));
    let t = Instant::now();
    for _ in 0..rounds {
        for e in &events {
            let _ = std::hint::black_box(flatten_rs::rules::flatten_message(
                std::hint::black_box(e),
                1 << 20,
                &flatten_rs::rules::RustCase,
            ));
        }
    }
    println!("flatten {:.2} us/event", per_event(t));
}
