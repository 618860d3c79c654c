"""`xdream export`: a session as NWB and/or CSV tables."""

from __future__ import annotations

import logging
from pathlib import Path

from xdream.errors import SessionError

log = logging.getLogger("xdream")


def add_parser(sub) -> None:
    ex = sub.add_parser("export", help="a session as NWB (pynwb) and/or CSV tables")
    ex.add_argument("session", help="the session folder")
    ex.add_argument("--nwb", metavar="OUT.nwb", help="write an NWB file")
    ex.add_argument("--csv", metavar="DIR", help="write presentations.csv and generations.csv into DIR")
    ex.add_argument("--no-images", action="store_true",
                    help="NWB: leave the images out (they are regenerated from the codes, which takes time)")
    # the session config's [metadata.subject] (journaled at its start) says these; a flag overrides it
    ex.add_argument("--subject-id", help="NWB: the animal's id (default: the session's, else 'unknown')")
    ex.add_argument("--species", help="NWB: the animal's species, e.g. 'Macaca mulatta' (default: the session's)")
    ex.add_argument("--sex", choices=["M", "F", "O", "U"],
                    help="NWB: the animal's sex (default: the session's, else U)")
    ex.add_argument("--age", help="NWB: the animal's age, ISO 8601 (P7Y); default: the session's, else 'P0D/' "
                                  "(unknown)")
    ex.set_defaults(func=run)


def run(args) -> int:
    from server.export import tables, write_csv, write_nwb
    from xdream.session_reader import load_session

    if not args.nwb and not args.csv:
        raise SessionError("say what to write: --nwb OUT.nwb and/or --csv DIR")
    session = load_session(args.session)
    for p in session.problems:
        log.warning("journal: %s", p)
    t = tables(session)
    if args.csv:
        for path in write_csv(session, Path(args.csv), t):
            print(f"wrote {path}", flush=True)
    if args.nwb:
        write_nwb(session, Path(args.nwb), with_images=not args.no_images, t=t,
                  subject_id=args.subject_id or "", species=args.species or "", sex=args.sex or "",
                  age=args.age or "")
        print(f"wrote {args.nwb}", flush=True)
    for note in t.notes:
        print(f"note: {note}", flush=True)
    return 0
