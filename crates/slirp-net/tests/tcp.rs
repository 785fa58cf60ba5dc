//! embassy-net on the host over slirp: DHCP gives the device 10.0.2.15; a
//! TCP connection to 10.0.2.2:PORT reaches a listener on the host's
//! 127.0.0.1:PORT and bytes go both ways; unplugging the link takes the
//! stack's link down, and plugging it back brings a connection again.

use embassy_futures::select::{select, Either};
use embassy_net::tcp::TcpSocket;
use embassy_net::{Stack, StackResources};
use embassy_time::{with_timeout, Duration};
use hil_slirp_net::{GUEST, HOST};
use static_cell::StaticCell;
use std::io::{Read, Write};
use std::net::TcpListener;

/// One echo connection at a time, `n` of them.
fn echo_server(n: usize) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for _ in 0..n {
            let (mut s, _) = l.accept().unwrap();
            let mut b = [0u8; 64];
            let k = s.read(&mut b).unwrap();
            s.write_all(&b[..k]).unwrap();
        }
    });
    port
}

async fn round_trip(stack: Stack<'static>, port: u16, msg: &[u8]) -> Vec<u8> {
    let (mut rx, mut tx) = ([0u8; 1024], [0u8; 1024]);
    let mut s = TcpSocket::new(stack, &mut rx, &mut tx);
    s.set_timeout(Some(Duration::from_secs(5)));
    s.connect((HOST, port)).await.expect("connect to 10.0.2.2");
    embedded_io_async::Write::write_all(&mut s, msg)
        .await
        .unwrap();
    let mut got = vec![0u8; msg.len()];
    embedded_io_async::Read::read_exact(&mut s, &mut got)
        .await
        .unwrap();
    s.close();
    got
}

#[test]
fn dhcp_tcp_and_an_unplugged_link_through_slirp() {
    let port = echo_server(2);
    let (device, link) = hil_slirp_net::start([0x02, 0, 0, 0, 0, 0x01]).unwrap();
    static RESOURCES: StaticCell<StackResources<3>> = StaticCell::new();
    let (stack, mut runner) = embassy_net::new(
        device,
        embassy_net::Config::dhcpv4(Default::default()),
        RESOURCES.init(StackResources::new()),
        0x1234_5678,
    );
    let test = async {
        with_timeout(Duration::from_secs(10), stack.wait_config_up())
            .await
            .expect("DHCP from slirp within 10 s");
        let cfg = stack.config_v4().unwrap();
        assert_eq!(cfg.address.address(), GUEST);
        assert_eq!(round_trip(stack, port, b"hello").await, b"hello");
        // Unplugged: the stack sees the link go down.
        link.set_up(false);
        with_timeout(Duration::from_secs(5), stack.wait_link_down())
            .await
            .expect("link down");
        link.set_up(true);
        with_timeout(Duration::from_secs(10), stack.wait_config_up())
            .await
            .expect("an address again after the link came back");
        assert_eq!(round_trip(stack, port, b"again").await, b"again");
    };
    match futures_executor::block_on(select(runner.run(), test)) {
        Either::First(never) => match never {},
        Either::Second(()) => {}
    }
}
