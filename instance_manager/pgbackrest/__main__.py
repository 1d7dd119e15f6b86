import sys

from instance_manager.pgbackrest import main

raise SystemExit(main(sys.argv[1:]))
