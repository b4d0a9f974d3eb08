echo failing on purpose
exit 3
