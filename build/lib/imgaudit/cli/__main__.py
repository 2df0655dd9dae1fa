from imgaudit.cli.main import app

if __name__ == "__main__":  # child processes that import this module must not run the CLI
    app(prog_name="imgaudit")
