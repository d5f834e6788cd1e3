use std::time::Instant;
fn main() {
    let data = std::fs::read("/tmp/ev.json").unwrap();
    let text = std::str::from_utf8(&data).unwrap();
    let n: u32 = std::env::var("N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20000);
    let t = Instant::now();
    for _ in 0..n {
        let _ = std::hint::black_box(flatten_rs::json::parse(std::hint::black_box(text)));
    }
    println!(
        "parse {:.2} us",
        t.elapsed().as_secs_f64() / f64::from(n) * 1e6
    );
    let t = Instant::now();
    for _ in 0..n {
        let _ = std::hint::black_box(flatten_rs::rules::flatten_message(
            std::hint::black_box(&data),
            1 << 20,
            &flatten_rs::rules::RustCase,
        ));
    }
    println!(
        "flatten {:.2} us",
        t.elapsed().as_secs_f64() / f64::from(n) * 1e6
    );
    let t = Instant::now();
    for _ in 0..n {
        let _ = std::hint::black_box(std::str::from_utf8(std::hint::black_box(&data)));
    }
    println!(
        "utf8 {:.2} us",
        t.elapsed().as_secs_f64() / f64::from(n) * 1e6
    );
}
