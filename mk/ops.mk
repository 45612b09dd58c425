# Operations: embedding of the API description, install and uninstall.
