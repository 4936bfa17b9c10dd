#!/usr/bin/env python3
"""How many WAL pages 32 job updates write in SQLite: an upsert shaped like
the writer's flush (`INSERT … ON CONFLICT DO UPDATE SET` every column a job
can change) against an UPDATE of only the columns that changed. A table shaped like
`jobs` (20,000 rows, five secondary indexes). Run: python3 sqlite_upsert_pages.py
"""
import os
import random
import sqlite3
import tempfile

PAGE_FRAME = 4096 + 24  # a WAL frame: its header and one page

path = os.path.join(tempfile.mkdtemp(), "x.db")
con = sqlite3.connect(path, isolation_level=None)
con.execute("pragma journal_mode=wal")
con.execute("pragma wal_autocheckpoint=0")
con.execute(
    "create table jobs(job_id text primary key, tenant text, run text, state text,"
    " pack text, lease_until int, created int, msg text, finished int)"
)
for ddl in [
    "create index a on jobs(tenant, run, created)",
    "create index b on jobs(tenant, job_id)",
    "create index c on jobs(tenant, state, pack, job_id)",
    "create index d on jobs(state, lease_until)",
    "create index e on jobs(tenant, pack, finished)",
]:
    con.execute(ddl)
con.execute("begin")
for i in range(20000):
    con.execute(
        "insert into jobs values(?,?,?,?,?,?,?,?,?)",
        (f"{random.getrandbits(64):016x}", "bench", f"run{random.randint(0, 600)}",
         "working", "external", 1000, i, "x" * 200, None),
    )
con.execute("commit")
rows = {r[0]: r for r in con.execute("select * from jobs")}
ids = list(rows)


def frames(sql, params):
    con.execute("pragma wal_checkpoint(TRUNCATE)")
    before = os.path.getsize(path + "-wal") if os.path.exists(path + "-wal") else 0
    con.execute("begin")
    con.executemany(sql, params)
    con.execute("commit")
    return round((os.path.getsize(path + "-wal") - before) / PAGE_FRAME)


# As the writer's `upsert_jobs`: every column but the key and the ones a job
# never changes (tenant, run, pack, created) is in the SET list.
upsert = (
    "insert into jobs(job_id,tenant,run,state,pack,lease_until,created,msg,finished)"
    " values(?,?,?,?,?,?,?,?,?) on conflict(job_id) do update set state=excluded.state,"
    " lease_until=excluded.lease_until, msg=excluded.msg, finished=excluded.finished"
)
same = frames(upsert, [(j, "bench", rows[j][2], "working", "external", 1000, rows[j][6],
                        "y" * 200, None) for j in random.sample(ids, 32)])
lease = frames(upsert, [(j, "bench", rows[j][2], "working", "external", 2000 + k, rows[j][6],
                         "y" * 200, None) for k, j in enumerate(random.sample(ids, 32))])
msg = frames("update jobs set msg=? where job_id=?",
             [("z" * 200, j) for j in random.sample(ids, 32)])
msg_lease = frames("update jobs set msg=?, lease_until=? where job_id=?",
                   [("z" * 200, 3000 + k, j) for k, j in enumerate(random.sample(ids, 32))])
print(f"WAL pages for 32 job updates: upsert as the flush writes it {same} (indexed values unchanged), "
      f"{lease} (new lease); UPDATE of the message only {msg}; message and lease {msg_lease}")
