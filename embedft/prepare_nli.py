"""``python -m embedft.prepare_nli``: build NLI training triplets (see ``embedft.data.prepare_nli``)."""

from embedft.data.prepare_nli import main

if __name__ == "__main__":
    raise SystemExit(main())
