"""pyrqlite against a bop cluster with HTTPS and users, as an application configures it.

Run by raft/tests/rqlite_clients.rs: secure.py CA_PEM HOST:PORT... The cluster's auth file has `app`
(password "app pw", execute and query) and `viewer` ("viewer pw", query only). Each check prints one line;
any failure raises.
"""

import ssl
import sys

import pyrqlite.dbapi2 as dbapi2


def connect(addr, ctx, user, password):
    host, port = addr.rsplit(":", 1)
    return dbapi2.connect(host=host, port=int(port), scheme="https", ssl_context=ctx, user=user, password=password)


def main():
    ca, addrs = sys.argv[1], sys.argv[2:]
    ctx = ssl.create_default_context(cafile=ca)
    # Through every node: followers forward writes, with the caller's credentials, to the leader.
    for i, addr in enumerate(addrs):
        cur = connect(addr, ctx, "app", "app pw").cursor()
        cur.execute("CREATE TABLE IF NOT EXISTS secure (id INTEGER PRIMARY KEY, via TEXT)")
        cur.execute("INSERT INTO secure(via) VALUES (?)", (addr,))
        cur.execute("SELECT via FROM secure ORDER BY id")
        rows = [r[0] for r in cur.fetchall()]
        assert rows == addrs[: i + 1], rows
    print(f"pyrqlite https: wrote and read through {len(addrs)} nodes", flush=True)
    cur = connect(addrs[0], ctx, "viewer", "viewer pw").cursor()
    cur.execute("SELECT COUNT(*) FROM secure")
    assert cur.fetchone()[0] == len(addrs)
    refusals = [
        ("viewer", "viewer pw", "INSERT INTO secure(via) VALUES ('viewer')", "403"),
        ("app", "wrong", "SELECT 1", "401"),
        (None, None, "SELECT 1", "401"),
    ]
    for user, password, sql, status in refusals:
        try:
            connect(addrs[1], ctx, user, password).cursor().execute(sql)
        except Exception as e:  # pyrqlite raises its own Error with the status in the message
            assert status in str(e), (user, str(e))
        else:
            raise AssertionError(f"{user} ran {sql!r}")
    print("pyrqlite https: a viewer's write 403, wrong and missing credentials 401", flush=True)
    try:
        plain = ssl.create_default_context()  # trusts the system's CAs, not the cluster's
        connect(addrs[0], plain, "app", "app pw").cursor().execute("SELECT 1")
    except ssl.SSLError as e:
        print(f"pyrqlite https: a client not trusting the cluster CA is refused ({e.reason})", flush=True)
    else:
        raise AssertionError("connected without trusting the cluster CA")
    print("all secure client checks passed", flush=True)


main()
