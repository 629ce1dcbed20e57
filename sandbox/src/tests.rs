use super::*;

#[test]
fn modes() {
    assert_eq!(Mode::parse("").unwrap(), Mode::Kill);
    assert_eq!(Mode::parse("on").unwrap(), Mode::Kill);
    assert_eq!(Mode::parse("log").unwrap(), Mode::Log);
    assert_eq!(Mode::parse("off").unwrap(), Mode::Off);
    assert!(Mode::parse("yes").is_err());
}

#[test]
fn names() {
    assert_eq!(syscall_name(libc::SYS_socket), "socket");
    assert_eq!(syscall_name(libc::SYS_uname), "uname");
    assert_eq!(syscall_name(100_000), "?");
}
