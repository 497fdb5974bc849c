import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from tfservice import pg_database, postgres_url, s3_server, s3_url  # noqa: F401  (fixtures)
