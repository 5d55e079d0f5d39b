// Reads a ZIP the way a Java program would and prints, per entry, "name<TAB>size<TAB>crc32" computed
// from the bytes it actually read. Run: java ZipCheck.java stream|file ARCHIVE ("-" = stdin for stream).
//   stream: java.util.zip.ZipInputStream, front to back, as `jar t <` does; it checks each CRC itself.
//   file:   java.util.zip.ZipFile (central directory); the CRC and size read must match the entry's.
// Any disagreement ends the program with an exception (exit status 1).
import java.io.*;
import java.nio.charset.StandardCharsets;
import java.util.Enumeration;
import java.util.zip.*;

public class ZipCheck {
    static final byte[] BUFFER = new byte[1 << 20];

    static long[] drain(InputStream in) throws IOException {
        CRC32 crc = new CRC32();
        long size = 0;
        for (int n; (n = in.read(BUFFER)) != -1; size += n) crc.update(BUFFER, 0, n);
        return new long[] {size, crc.getValue()};
    }

    static void print(PrintWriter out, String name, long[] read) {
        out.printf("%s\t%d\t%08x%n", name, read[0], read[1]);
    }

    public static void main(String[] args) throws IOException {
        PrintWriter out = new PrintWriter(new BufferedWriter(new OutputStreamWriter(System.out, StandardCharsets.UTF_8)));
        if (args[0].equals("stream")) {
            InputStream raw = args[1].equals("-") ? System.in : new FileInputStream(args[1]);
            try (ZipInputStream zin = new ZipInputStream(new BufferedInputStream(raw, 1 << 16), StandardCharsets.UTF_8)) {
                for (ZipEntry e; (e = zin.getNextEntry()) != null; ) {
                    long[] read = drain(zin);
                    // After the entry, ZipInputStream has checked the CRC and sizes against the descriptor.
                    if (e.getSize() != read[0] || e.getCrc() != read[1])
                        throw new ZipException(e.getName() + ": entry says " + e.getSize() + "/" + e.getCrc());
                    print(out, e.getName(), read);
                }
            }
        } else {
            try (ZipFile zf = new ZipFile(new File(args[1]), StandardCharsets.UTF_8)) {
                for (Enumeration<? extends ZipEntry> en = zf.entries(); en.hasMoreElements(); ) {
                    ZipEntry e = en.nextElement();
                    long[] read;
                    try (InputStream in = zf.getInputStream(e)) { read = drain(in); }
                    if (e.getSize() != read[0] || e.getCrc() != read[1])
                        throw new ZipException(e.getName() + ": entry says " + e.getSize() + "/" + e.getCrc());
                    print(out, e.getName(), read);
                }
            }
        }
        out.flush();
    }
}
