//! `countdown`: a command component (a job). `countdown [N]` prints N down
//! to 1, then `$GREETING` (default "liftoff"), and exits 0.
//!
//! Flags that make it misbehave, for the tests and the quota demos:
//! `--fail` (exit 1), `--exit CODE` (exit with CODE through WASI's
//! `exit-with-code`), `--burn` (compute forever: the fuel quota stops it),
//! `--hog` (allocate forever: the memory quota stops it), `--sleep MS`
//! (wait before counting), `--trap` (panic). And `--every MS`: print a
//! numbered tick every MS milliseconds, forever (a worker).

use std::io::Write as _;

fn main() {
    let mut args = std::env::args().skip(1);
    let mut from: u64 = 3;
    let mut sleep_ms: u64 = 0;
    let mut exit: Option<u8> = None;
    let mut fail = false;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--fail" => fail = true,
            "--exit" => exit = args.next().and_then(|c| c.parse().ok()),
            "--sleep" => sleep_ms = args.next().and_then(|c| c.parse().ok()).unwrap_or(0),
            "--burn" => burn(),
            "--hog" => hog(),
            "--every" => every(args.next().and_then(|c| c.parse().ok()).unwrap_or(1000)),
            "--trap" => panic!("asked to trap"),
            n => from = n.parse().unwrap_or(from),
        }
    }
    if sleep_ms > 0 {
        std::thread::sleep(std::time::Duration::from_millis(sleep_ms));
    }
    let mut out = std::io::stdout().lock();
    for i in (1..=from).rev() {
        let _ = writeln!(out, "{i}");
    }
    let greeting = std::env::var("GREETING").unwrap_or_else(|_| "liftoff".into());
    let _ = writeln!(out, "{greeting}");
    let _ = out.flush();
    drop(out);
    if let Some(code) = exit {
        eprintln!("exiting with status {code}");
        wasip2::cli::exit::exit_with_code(code);
    }
    if fail {
        eprintln!("failing as asked");
        std::process::exit(1);
    }
}

fn every(ms: u64) -> ! {
    let greeting = std::env::var("GREETING").unwrap_or_else(|_| "tick".into());
    for n in 1.. {
        println!("{greeting} {n}");
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
    unreachable!("counts forever")
}

fn burn() -> ! {
    let mut acc: u64 = 1;
    loop {
        acc = std::hint::black_box(acc.rotate_left(5) ^ 0x9E37).wrapping_mul(31);
    }
}

fn hog() -> ! {
    let mut kept: Vec<Vec<u8>> = Vec::new();
    loop {
        kept.push(vec![1u8; 1 << 20]);
        std::hint::black_box(&kept);
    }
}
