# dropbear runs the sftp subsystem (today's scp, and sftp) as /usr/lib/sftp-server; Debian puts
# OpenSSH's at /usr/lib/openssh/sftp-server.
ln -s openssh/sftp-server usr/lib/sftp-server
