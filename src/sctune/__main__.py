from sctune.cli.main import main

main()
