//! Prints what the default scanner finds in a string:
//! `cargo run -p agentfed-policy-pii --example probe -- [PATH] TEXT`.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (path, text) = if args.len() == 2 {
        (args[0].clone(), args[1].clone())
    } else {
        (String::from("/m"), args[0].clone())
    };
    for f in agentfed_policy_pii::detect(&path, &text) {
        println!(
            "{:>12} {:>4}..{:<4} {:.2} {:<24} {:?}",
            f.pii_type,
            f.start,
            f.end,
            f.confidence,
            f.rule,
            &text[f.start..f.end]
        );
    }
}
