"""CosyVoice Studio WebUI: `python app.py --help` lists every flag; the server lives in cosyvoice.server.app."""
import sys

from cosyvoice.server.app import main

if __name__ == "__main__":
    sys.exit(main())
