//! HTTPS with a test CA, and host names through a test resolv.conf, hosts file and DNS responder.

use std::net::Ipv4Addr;

use crate::server::{self, Opts, Server};
use crate::{dns, payload, Scratch};

#[test]
fn https_with_a_trusted_test_ca() {
    let s = Scratch::new();
    let data = payload(300_000);
    let (ca_pem, tls) = server::tls_setup("berth test CA");
    server::write_ca(&s.path("ca.pem"), &ca_pem);
    let srv = Server::start_with(data.clone(), Opts::default(), Some(tls));
    let ca = s.path("ca.pem");
    let ca = ca.to_str().unwrap();
    s.fetch(&srv.url("/img"), "c.qcow2", &[("SSL_CERT_FILE", ca)])
        .ok();
    s.assert_image("c.qcow2", &data);
    // By name, through the hosts file, checked against the certificate's DNS name.
    std::fs::write(s.path("hosts"), "127.0.0.1 localhost\n").unwrap();
    let url = format!("https://localhost:{}/img", srv.addr.port());
    s.fetch(&url, "d.qcow2", &[("SSL_CERT_FILE", ca)]).ok();
    // Another CA: the handshake fails, with the cause, and is not retried.
    let (other_ca, _) = server::tls_setup("another CA");
    server::write_ca(&s.path("other.pem"), &other_ca);
    let other = s.path("other.pem");
    let err = s
        .fetch(
            &srv.url("/img"),
            "e.qcow2",
            &[("SSL_CERT_FILE", other.to_str().unwrap())],
        )
        .failed();
    assert!(
        err.contains("TLS with") && err.contains("UnknownIssuer"),
        "{err}"
    );
    assert!(err.contains("SSL_CERT_FILE"), "{err}");
    let err = s
        .fetch(
            &srv.url("/img"),
            "e.qcow2",
            &[("SSL_CERT_FILE", "/nonexistent.pem")],
        )
        .failed();
    assert!(
        err.contains("cannot use the CA bundle /nonexistent.pem"),
        "{err}"
    );
    assert_eq!(srv.image_gets(), 2);
}

#[test]
fn https_never_downgrades_on_redirect() {
    let s = Scratch::new();
    let data = payload(100_000);
    let (ca_pem, tls) = server::tls_setup("berth test CA");
    server::write_ca(&s.path("ca.pem"), &ca_pem);
    let ca = s.path("ca.pem");
    let env = [("SSL_CERT_FILE", ca.to_str().unwrap())];
    let plain = Server::start(data.clone(), Opts::default());
    let secure = Server::start_with(data.clone(), Opts::default(), Some(tls));
    // https -> http: one line naming both URLs, not retried, nothing saved, and the plain
    // server never asked.
    secure.set(|o| o.away = plain.url("/img"));
    let err = s.fetch(&secure.url("/away"), "c.qcow2", &env).failed();
    assert!(
        err.contains("redirected to http://") && err.contains("not HTTPS"),
        "{err}"
    );
    assert!(err.contains("nothing was saved"), "{err}");
    assert_eq!(s.listing(), vec![".c.qcow2.lock"]);
    assert!(plain.seen().is_empty(), "{:?}", plain.seen());
    let paths: Vec<String> = secure.seen().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, vec!["/away"], "not retried");
    // https -> https is followed; http -> http (a plain source) is too.
    secure.set(|o| o.away = "/img".into());
    s.fetch(&secure.url("/away"), "d.qcow2", &env).ok();
    s.assert_image("d.qcow2", &data);
    plain.set(|o| o.away = "/img".into());
    s.fetch(&plain.url("/away"), "e.qcow2", &[]).ok();
    s.assert_image("e.qcow2", &data);
}

/// A resolv.conf for the test responder, and the environment pointing the fetch at it.
fn dns_setup(s: &Scratch, conf: &str, port: u16) -> [(&'static str, String); 1] {
    std::fs::write(s.path("resolv.conf"), conf).unwrap();
    [("BERTH_DNS_PORT", port.to_string())]
}

fn env_ref<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[test]
fn host_names_resolve_through_resolv_conf() {
    let s = Scratch::new();
    let data = payload(100_000);
    let srv = Server::start(data.clone(), Opts::default());
    let lo = Ipv4Addr::LOCALHOST;
    let ns = dns::DnsServer::start(
        &[("img.berth.test", lo), ("big.berth.test", lo)],
        &["big.berth.test"],
    );
    let env = dns_setup(
        &s,
        "search other.test berth.test\noptions ndots:2\nnameserver 127.0.0.1\n",
        ns.port,
    );
    let env = env_ref(&env);
    let port = srv.addr.port();

    s.fetch(
        &format!("http://img.berth.test:{port}/img"),
        "a.qcow2",
        &env,
    )
    .ok();
    s.assert_image("a.qcow2", &data);
    // One dot is fewer than ndots: the search list comes first.
    s.fetch(&format!("http://img:{port}/img"), "b.qcow2", &env)
        .ok();
    let asked: Vec<String> = ns
        .queries()
        .into_iter()
        .filter(|q| q.1 == 1)
        .map(|q| q.0)
        .collect();
    assert_eq!(
        asked,
        vec!["img.berth.test", "img.other.test", "img.berth.test"]
    );
    // A truncated UDP answer is asked again over TCP.
    s.fetch(
        &format!("http://big.berth.test:{port}/img"),
        "c.qcow2",
        &env,
    )
    .ok();
    assert!(ns.queries().contains(&("big.berth.test".into(), 1, true)));
    // /etc/hosts comes before DNS.
    std::fs::write(s.path("hosts"), "127.0.0.1 fromhosts\n").unwrap();
    let before = ns.queries().len();
    s.fetch(&format!("http://fromhosts:{port}/img"), "d.qcow2", &env)
        .ok();
    assert_eq!(ns.queries().len(), before);
}

#[test]
fn nxdomain_is_a_clear_error() {
    let s = Scratch::new();
    let ns = dns::DnsServer::start(&[], &[]);
    let env = dns_setup(&s, "search berth.test\nnameserver 127.0.0.1\n", ns.port);
    let err = s
        .fetch("http://nosuch.example:8080/img", "c.qcow2", &env_ref(&env))
        .failed();
    assert!(
        err.contains("cannot resolve") && err.contains("no such host nosuch.example"),
        "{err}"
    );
    assert!(err.contains("nosuch.example.berth.test"), "{err}");
    // A nameserver that never answers is a DNS failure too, after the retries.
    let env = dns_setup(
        &s,
        "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
        9,
    );
    let err = s
        .fetch(
            "http://img.example/c",
            "c.qcow2",
            &[("IMG_FETCH_RETRIES", "1"), ("BERTH_DNS_PORT", &env[0].1)],
        )
        .failed();
    assert!(err.contains("no DNS server answered"), "{err}");
}
