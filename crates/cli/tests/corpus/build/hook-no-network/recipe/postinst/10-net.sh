wget -q -T 5 -O /dev/null http://1.1.1.1/ || exit 7
