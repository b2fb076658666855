// The part of gixb's binary berth already has: reqwest's blocking client over rustls.
fn main() {
    let url = std::env::args().nth(1).unwrap_or_else(|| "https://127.0.0.1:1/".into());
    let r = reqwest::blocking::Client::new().get(url).basic_auth("u", Some("p")).send();
    println!("{:?}", r.map(|r| r.status()));
}
