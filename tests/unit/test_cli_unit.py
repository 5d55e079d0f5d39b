"""The command line's pure rules: sizes, --listen, flag combinations, flag wording (no sockets, no processes)."""

import pytest

from wsgi_stream.cli import StartError, build_parser, check_combinations, flag_wording, listen_address, parse_size


@pytest.mark.parametrize("text, size", [
    ("0", 0), ("1073741824", 1 << 30), ("512K", 512 << 10), ("512k", 512 << 10), ("10M", 10 << 20),
    ("10G", 10 << 30), ("10GiB", 10 << 30), ("2T", 2 << 40), (" 3 G ", 3 << 30),
    ("-5", "-5"), ("10x", "10x"), ("10GB", "10GB"), ("1.5G", "1.5G"), ("", ""),
])
def test_max_upload_size_takes_powers_of_1024_and_leaves_the_rest_to_the_config_check(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("listen, default, expected", [
    ("127.0.0.1", 8080, "127.0.0.1:8080"),
    ("127.0.0.1:9000", 8080, "127.0.0.1:9000"),
    ("127.0.0.1:0", 8080, "127.0.0.1:0"),
    ("0.0.0.0", 8001, "0.0.0.0:8001"),
    ("[::1]:8001", 8080, "[::1]:8001"),
    ("[::1]", 8001, "[::1]:8001"),
    ("localhost", 80, "localhost:80"),
])
def test_listen_without_port_takes_the_default_port(listen, default, expected):
    assert listen_address(listen, default) == expected


@pytest.mark.parametrize("listen, message", [
    ("127.0.0.1:99999", "is not like HOST:PORT"),
    ("127.0.0.1:http", "is not like HOST:PORT"),
    (":8080", "is not like HOST:PORT"),
    ("127.0.0.1:80/x", "is not like HOST:PORT"),
    ("user@127.0.0.1:80", "is not like HOST:PORT"),
    ("no-such-host.invalid:80", "unknown host"),
])
def test_bad_listen_is_one_line(listen, message):
    with pytest.raises(StartError) as err:
        listen_address(listen, 8080)
    assert message in str(err.value) and "\n" not in str(err.value)


def parsed(*argv):
    parser = build_parser()
    return parser.parse_args(argv), parser


@pytest.mark.parametrize("argv, message", [
    (("--config", "c.toml", "--node", "a", "--token", "t"), "--token applies only without --config"),
    (("--config", "c.toml", "--node", "a", "--uploads"), "--uploads applies only without --config"),
    (("--config", "c.toml", "--node", "a", "--max-upload-size", "1G"), "--max-upload-size applies only"),
    (("--config", "c.toml", "--node", "a", "--root", "/srv"), "--root applies only without --config"),
    (("--demo", "--config", "c.toml"), "--config does not apply to it"),
    (("--demo", "--listen", "127.0.0.1:1"), "--listen does not apply to it"),
    (("--demo", "--uploads"), "--uploads does not apply to it"),
])
def test_flags_that_do_not_go_together_are_one_line(argv, message):
    args, parser = parsed(*argv)
    with pytest.raises(StartError) as err:
        check_combinations(args, parser)
    assert message in str(err.value)


@pytest.mark.parametrize("argv", [
    (), ("--root", "/srv", "--token", "t", "--uploads", "--max-upload-size", "1G"),
    ("--config", "c.toml", "--node", "a", "--listen", "0.0.0.0"),
    ("--check", "--config", "c.toml", "--node", "a"),
    ("--demo", "--demo-dir", "/tmp/x", "--threads", "4", "--grace", "1", "--client-timeout", "5"),
])
def test_flags_that_go_together_pass(argv):
    args, parser = parsed(*argv)
    check_combinations(args, parser)


def test_config_without_node_is_a_usage_error_with_the_whole_usage(capsys):
    args, parser = parsed("--config", "c.toml")
    with pytest.raises(SystemExit) as exit_:
        check_combinations(args, parser)
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.startswith("usage: wsgi-stream ") and "--config FILE --node NAME" in err and "--demo" in err
    assert err.rstrip().endswith("wsgi-stream: error: --node is required with --config")


@pytest.mark.parametrize("message, expected", [
    ("<command line>: [cluster] max_upload_size must be a number of bytes >= 0, not -5",
     "--max-upload-size must be a number of bytes >= 0, not -5"),
    ("<command line>: [cluster] token must be a non-empty string, not ''", "--token must be a non-empty string, not ''"),
    ("<command line>: [nodes.box] root '/x' is not a directory", "--root '/x' is not a directory"),
    ("<command line>: node name 'a/b' is not usable in a URL path",
     "<command line>: node name 'a/b' is not usable in a URL path"),
])
def test_config_messages_about_flags_name_the_flags(message, expected):
    assert flag_wording(message, "<command line>", "box") == expected
