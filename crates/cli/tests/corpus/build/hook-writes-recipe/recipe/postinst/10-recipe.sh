echo changed > "$KILN_RECIPE/etc/rc"
