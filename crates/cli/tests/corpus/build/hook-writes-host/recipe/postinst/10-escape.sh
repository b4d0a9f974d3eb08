echo pwned > /etc/kiln-corpus-escape
