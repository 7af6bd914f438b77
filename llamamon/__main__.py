from llamamon.cli import main

main()
