"""Drives a bop cluster through real rqlite client libraries, the way applications use them.

Run by raft/tests/rqlite_clients.rs with the cluster's HTTP addresses as arguments (HOST:PORT ...), in a
virtual environment holding pyrqlite (DB-API 2.0), sqlalchemy-rqlite (SQLAlchemy's dialect on pyrqlite)
and rqdb. Each check prints one line; any failure raises, and the exit status is non-zero.
"""

import json
import sys
import tempfile
import urllib.parse
import urllib.request


def say(message):
    print(message, flush=True)


def get_json(addr, path):
    """GET http://addr/path without following redirects: (status, headers, JSON body)."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(f"http://{addr}{path}", timeout=30) as response:
            return response.status, response.headers, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, e.headers, json.loads(e.read() or b"null")


def discover(addrs):
    """Finds the leader and the peers as rqlite's Go client does: /status's store.leader.node_id, then the
    legacy /nodes map (api_addr URLs, reachable, leader); checks the ver=2 form agrees."""
    status_code, headers, status = get_json(addrs[0], "/status")
    assert status_code == 200, status
    assert headers.get("X-RQLITE-VERSION", "").startswith("bop-"), dict(headers)
    leader_id = status["store"]["leader"]["node_id"]
    assert isinstance(leader_id, str) and leader_id, status["store"]
    _, _, nodes = get_json(addrs[0], "/nodes")
    leader, peers = None, []
    for node_id, node in nodes.items():
        assert node["id"] == node_id, node
        assert node["reachable"] is True, node
        host = urllib.parse.urlparse(node["api_addr"]).netloc
        assert host in addrs, (host, addrs)
        if node["leader"]:
            leader = host
        else:
            peers.append(host)
    assert leader is not None and nodes[leader_id]["leader"], nodes
    _, _, v2 = get_json(addrs[0], "/nodes?ver=2")
    assert sorted(n["id"] for n in v2["nodes"]) == sorted(nodes), v2
    assert [urllib.parse.urlparse(n["api_addr"]).netloc for n in v2["nodes"] if n["leader"]] == [leader], v2
    # Every node names the same leader in /status.
    for addr in addrs:
        _, _, other = get_json(addr, "/status")
        assert other["store"]["leader"]["node_id"] == leader_id, (addr, other["store"])
    say(f"discovery: leader {leader} (node {leader_id}), peers {sorted(peers)}, via /status and /nodes")
    return leader, sorted(peers)


def dbapi(follower):
    """pyrqlite: DB-API 2.0 cursors against a follower (writes forwarded to the leader)."""
    import pyrqlite.dbapi2 as dbapi2

    host, port = follower.rsplit(":", 1)
    conn = dbapi2.connect(host=host, port=int(port))
    cursor = conn.cursor()
    cursor.execute("CREATE TABLE IF NOT EXISTS people (id INTEGER PRIMARY KEY, name TEXT NOT NULL, age INTEGER)")
    cursor.execute("INSERT INTO people (name, age) VALUES (?, ?)", ("fiona", 20))
    assert cursor.lastrowid == 1, cursor.lastrowid
    cursor.executemany("INSERT INTO people (name, age) VALUES (?, ?)", [("billy", 29), ("o'hara", 39)])
    assert cursor.rowcount == 2, cursor.rowcount
    # pyrqlite reports rows_affected as the rowcount of UPDATE and DELETE (SQLAlchemy checks it).
    cursor.execute("UPDATE people SET age = age + 1 WHERE age > ?", (25,))
    assert cursor.rowcount == 2, cursor.rowcount
    cursor.execute("SELECT id, name, age FROM people WHERE age >= ? ORDER BY id", (30,))
    assert [d[0] for d in cursor.description] == ["id", "name", "age"], cursor.description
    rows = cursor.fetchall()
    assert [tuple(r) for r in rows] == [(2, "billy", 30), (3, "o'hara", 40)], rows
    cursor.execute("SELECT count(*) FROM people")
    assert cursor.fetchone()[0] == 3
    cursor.execute("PRAGMA table_info(people)")
    columns = [(r[1], r[2], r[3], r[5]) for r in cursor.fetchall()]
    assert columns == [("id", "INTEGER", 0, 1), ("name", "TEXT", 1, 0), ("age", "INTEGER", 0, 0)], columns
    try:
        cursor.execute("INSERT INTO nope VALUES (1)")
    except dbapi2.Error as e:
        assert "no such table" in str(e), e
    else:
        raise AssertionError("an SQL error must raise")
    conn.close()
    say(f"pyrqlite: DB-API cursors on follower {follower}: execute, executemany, fetch, description, "
        "PRAGMA table_info, errors raised")


def orm(follower):
    """sqlalchemy-rqlite: an ORM model, create_all and inspection (PRAGMA table_info), sessions."""
    import sqlalchemy
    from sqlalchemy import ForeignKey, String, inspect, select
    from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

    class Base(DeclarativeBase):
        pass

    class Author(Base):
        __tablename__ = "authors"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(String(80), unique=True)
        books: Mapped[list["Book"]] = relationship(back_populates="author")

    class Book(Base):
        __tablename__ = "books"
        id: Mapped[int] = mapped_column(primary_key=True)
        title: Mapped[str] = mapped_column(String(200))
        author_id: Mapped[int] = mapped_column(ForeignKey("authors.id"))
        author: Mapped[Author] = relationship(back_populates="books")

    import pyrqlite.dbapi2

    engine = sqlalchemy.create_engine(f"rqlite+pyrqlite://{follower}/")
    # sqlalchemy-rqlite 2.0 never tells SQLAlchemy the SQLite version (its dialect lacks
    # _get_server_version_info), so SQLAlchemy's get_columns compares None with a tuple and fails, against
    # any server. Give it pyrqlite's own figure (3.10), with which SQLAlchemy reads columns through
    # PRAGMA table_info.
    with engine.connect():
        if engine.dialect.server_version_info is None:
            engine.dialect.server_version_info = pyrqlite.dbapi2.sqlite_version_info
    Base.metadata.create_all(engine)
    # create_all checked for each table first (PRAGMA table_info); a second run creates nothing.
    Base.metadata.create_all(engine)
    inspector = inspect(engine)
    assert {"authors", "books"} <= set(inspector.get_table_names()), inspector.get_table_names()
    book_columns = {c["name"]: c for c in inspector.get_columns("books")}
    assert set(book_columns) == {"id", "title", "author_id"}, book_columns
    assert str(book_columns["title"]["type"]) == "VARCHAR(200)", book_columns["title"]
    assert inspector.get_pk_constraint("books")["constrained_columns"] == ["id"]
    fks = inspector.get_foreign_keys("books")
    assert [(fk["referred_table"], fk["constrained_columns"]) for fk in fks] == [("authors", ["author_id"])], fks
    with Session(engine) as session:
        ursula = Author(name="Ursula")
        session.add_all([Book(title="The Dispossessed", author=ursula), Book(title="Lathe of Heaven", author=ursula)])
        session.commit()
    with Session(engine) as session:
        titles = session.scalars(select(Book.title).join(Author).where(Author.name == "Ursula").order_by(Book.title))
        assert list(titles) == ["Lathe of Heaven", "The Dispossessed"]
        author = session.scalars(select(Author)).one()
        assert len(author.books) == 2
    say(f"sqlalchemy-rqlite: ORM on follower {follower}: create_all and inspection through PRAGMA "
        "table_info / foreign_key_list, sessions, joins")


def redirects(follower, leader):
    """rqdb: sends `redirect` and follows the 301 to the leader itself; finds the leader that way."""
    import rqdb

    host, port = follower.rsplit(":", 1)
    conn = rqdb.connect([follower], max_redirects=3)
    assert conn.discover_leader() == tuple([leader.rsplit(":", 1)[0], int(leader.rsplit(":", 1)[1])]), leader
    cursor = conn.cursor()
    cursor.execute("CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v)")
    result = cursor.execute("INSERT INTO kv (k, v) VALUES (?, ?)", ("a", 1))
    assert result.rows_affected == 1, result
    cursor.executemany2(["INSERT INTO kv (k, v) VALUES (?, ?)"] * 2, [("b", 2), ("c", 3)])
    rows = cursor.execute("SELECT k, v FROM kv ORDER BY k").results
    assert rows == [["a", 1], ["b", 2], ["c", 3]], rows
    # A local read on the follower (rqdb sends level=none&freshness=0).
    local = conn.cursor(read_consistency="none")
    for _ in range(100):
        rows = local.execute("SELECT count(*) FROM kv").results
        if rows == [[3]]:
            break
    assert rows == [[3]], rows
    with tempfile.TemporaryFile() as backup:
        conn.backup(backup)
        backup.seek(0)
        assert backup.read(16) == b"SQLite format 3\x00"
    say(f"rqdb: writes and reads from follower {follower} redirected (301) to {leader}, leader discovery, "
        "level=none reads, backup")


def main():
    addrs = sys.argv[1:]
    assert len(addrs) == 3, addrs
    leader, peers = discover(addrs)
    dbapi(peers[0])
    orm(peers[1])
    redirects(peers[0], leader)
    say("all client checks passed")


if __name__ == "__main__":
    main()
