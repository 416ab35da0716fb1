from nimsforest.cli import main

main()
