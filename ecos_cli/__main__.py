from ecos_cli.main import main

main()
