"""The soak's fixed layout, shared by the upstream, the load driver and soak.sh: the three
Prime regions (each its own endpoint on its own loopback address, as Prime's three domains
are three different hosts), their marketplaces and signing regions, and the port range every
listener must use. Standard library only.

    python3 layout.py free-ports N LO-HI [EXCLUDE ...]   # N free 127.0.0.1 ports in LO..HI
    python3 layout.py regions                            # KEY ADDRESS SIGNING_REGION, one a line
"""

from __future__ import annotations

import socket
import sys

# region key -> (endpoint address, SigV4 signing region, marketplaces), as the proxy's built-in
# region table has them; only the endpoint is overridden in the soak's proxy config.
REGIONS = {
    "na": ("127.0.0.1", "us-east-1", ("US", "CA", "MX")),
    "eu": ("127.0.0.2", "eu-west-1", ("UK", "FR", "IT", "ES", "IN", "AE", "SA", "EG", "NL", "DE", "TR")),
    "fe": ("127.0.0.3", "us-west-2", ("JP", "SG", "AU")),
}
REGION_KEYS = tuple(REGIONS)
ADDRESS = {key: spec[0] for key, spec in REGIONS.items()}
SIGNING_REGION = {key: spec[1] for key, spec in REGIONS.items()}
REGION_OF_MARKETPLACE = {mp: key for key, spec in REGIONS.items() for mp in spec[2]}
MARKETPLACES = tuple(REGION_OF_MARKETPLACE)


def parse_range(text: str) -> tuple[int, int]:
    lo, sep, hi = text.partition("-")
    if not sep:
        raise ValueError("port range must look like LO-HI, got %r" % text)
    a, b = int(lo), int(hi)
    if not 1 <= a <= b <= 65535:
        raise ValueError("bad port range %r" % text)
    return a, b


def bind_first_free(addresses, lo: int, hi: int, exclude=(), reuse: bool = True):
    """Binds a TCP socket on ``port`` for every address in ``addresses`` (the same port on
    all), for the first ``port`` in ``lo..hi`` where all binds succeed. Returns (port,
    sockets), the sockets bound but not listening; raises OSError when none is free."""
    for port in range(lo, hi + 1):
        if port in exclude:
            continue
        socks = []
        try:
            for address in addresses:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(s)
                if reuse:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((address, port))
            return port, socks
        except OSError:
            for s in socks:
                s.close()
    raise OSError("no free port in %d-%d on %s" % (lo, hi, ", ".join(addresses)))


def free_ports(n: int, lo: int, hi: int, exclude=()) -> list[int]:
    """``n`` ports in ``lo..hi`` free on 127.0.0.1 right now (for the proxy to bind)."""
    found: list[int] = []
    held = []
    try:
        for _ in range(n):
            port, socks = bind_first_free(["127.0.0.1"], lo, hi, set(exclude) | set(found))
            for s in socks:
                s.listen(1)  # a listening socket: nothing else can take the port meanwhile
            held += socks
            found.append(port)
    finally:
        for s in held:
            s.close()
    return found


def main(argv: list[str]) -> int:
    if len(argv) >= 3 and argv[0] == "free-ports":
        lo, hi = parse_range(argv[2])
        print(*free_ports(int(argv[1]), lo, hi, {int(x) for x in argv[3:]}))
        return 0
    if argv == ["regions"]:
        for key, (address, signing_region, _) in REGIONS.items():
            print(key, address, signing_region)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
